//! The show catalogue: listing and searching shows, soonest first, with cursor
//! pagination. Reads the seat-map read model (every show the log has scheduled).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use boxoffice_domain::ShowId;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult};
use crate::openapi::Problem;
use crate::state::AppState;
use crate::views::{ShowPage, ShowView};

pub const PAGE_LIMIT_DEFAULT: usize = 50;
pub const PAGE_LIMIT_MAX: usize = 100;
/// The page size a list request asks for: `limit`, 50 by default, 1 to 100.
pub fn page_limit(limit: Option<usize>) -> ApiResult<usize> {
    let limit = limit.unwrap_or(PAGE_LIMIT_DEFAULT);
    if limit == 0 || limit > PAGE_LIMIT_MAX {
        return Err(ApiError::invalid_field(
            "limit",
            format!("must be between 1 and {PAGE_LIMIT_MAX}"),
        ));
    }
    Ok(limit)
}

/// Longest search text accepted.
const QUERY_LEN_MAX: usize = 200;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_shows))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Text to find in the show's or the venue's name (case-insensitive).
    #[param(max_length = 200)]
    q: Option<String>,
    /// The venue's city (case-insensitive, exact).
    city: Option<String>,
    /// Shows starting at or after this instant.
    from: Option<DateTime<Utc>>,
    /// Shows starting before this instant (after `from`).
    to: Option<DateTime<Utc>>,
    /// Shows per page.
    #[param(minimum = 1, maximum = 100, default = 50)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Where a page starts: after the show with this start time and id (the sort key).
/// Opaque to clients: hex of `"<rfc3339>|<show id>"`.
fn encode_cursor(starts_at: DateTime<Utc>, show: ShowId) -> String {
    format!("{}|{show}", starts_at.to_rfc3339())
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn decode_cursor(cursor: &str) -> Option<(DateTime<Utc>, ShowId)> {
    if !cursor.len().is_multiple_of(2) || cursor.len() > 512 {
        return None;
    }
    // Pairs of bytes, not of characters: a cursor that is not ASCII must be refused, not
    // sliced in the middle of a character.
    let bytes: Option<Vec<u8>> = cursor
        .as_bytes()
        .chunks(2)
        .map(|pair| {
            let hex = std::str::from_utf8(pair).ok()?;
            u8::from_str_radix(hex, 16).ok()
        })
        .collect();
    let text = String::from_utf8(bytes?).ok()?;
    let (at, id) = text.split_once('|')?;
    Some((
        DateTime::parse_from_rfc3339(at).ok()?.with_timezone(&Utc),
        id.parse().ok()?,
    ))
}

/// List shows
///
/// Every show, soonest first, optionally filtered; paginated with `limit` and `cursor`.
#[utoipa::path(
    get,
    path = "/v1/shows",
    tag = "shows",
    params(ListParams),
    responses(
        (status = 200, description = "A page of shows.", body = ShowPage),
        (status = 422, description = "`validation_failed`: a bad `limit`, `cursor`, `q`, or `to` not after `from`.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn list_shows(
    State(app): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(params) = params.map_err(|e| ApiError::invalid_field("query", e.body_text()))?;
    let limit = page_limit(params.limit)?;
    let after =
        match &params.cursor {
            Some(c) => Some(decode_cursor(c).ok_or_else(|| {
                ApiError::invalid_field("cursor", "is not a cursor from this API")
            })?),
            None => None,
        };
    if params
        .q
        .as_ref()
        .is_some_and(|q| q.chars().count() > QUERY_LEN_MAX)
    {
        return Err(ApiError::invalid_field(
            "q",
            format!("at most {QUERY_LEN_MAX} characters"),
        ));
    }
    if let (Some(from), Some(to)) = (params.from, params.to)
        && to <= from
    {
        return Err(ApiError::invalid_field("to", "must be after from"));
    }
    let q = params
        .q
        .as_deref()
        .map(str::to_lowercase)
        .filter(|q| !q.trim().is_empty());
    let city = params.city.as_deref().map(str::to_lowercase);
    let now = app.engine.clock().now();

    // Matching shows with their sort key; each show's lock is held only to read it.
    let mut matches: Vec<(DateTime<Utc>, ShowId, ShowView)> = Vec::new();
    for view in app.seatmaps.shows() {
        let view = view.read().expect("show lock");
        let Some(show) = view.state.show.as_ref() else {
            continue;
        };
        let d = &show.definition;
        let key = (d.starts_at, show.show_id);
        if after.is_some_and(|a| key <= a)
            || params.from.is_some_and(|from| d.starts_at < from)
            || params.to.is_some_and(|to| d.starts_at >= to)
            || city
                .as_ref()
                .is_some_and(|c| d.venue.city.to_lowercase() != *c)
            || q.as_ref().is_some_and(|q| {
                !d.name.to_lowercase().contains(q) && !d.venue.name.to_lowercase().contains(q)
            })
        {
            continue;
        }
        matches.push((key.0, key.1, ShowView::new(&view.state, show, now)));
    }
    matches.sort_by_key(|m| (m.0, m.1));
    let more = matches.len() > limit;
    matches.truncate(limit);
    let next_cursor = if more {
        matches.last().map(|(at, id, _)| encode_cursor(*at, *id))
    } else {
        None
    };
    let data: Vec<ShowView> = matches.into_iter().map(|(_, _, v)| v).collect();
    Ok(axum::Json(ShowPage { data, next_cursor }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let at: DateTime<Utc> = "2030-05-01T20:00:00Z".parse().unwrap();
        let id = ShowId(uuid::Uuid::now_v7());
        assert_eq!(decode_cursor(&encode_cursor(at, id)), Some((at, id)));
        for bad in [
            "",
            "zz",
            "abc",
            "7c7c",
            &"ab".repeat(300),
            "K¬Áòú",
            "¬7c",
            "+1",
        ] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }
}
