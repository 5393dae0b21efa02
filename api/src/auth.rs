//! Authentication and roles: registration, password hashing (argon2id with OWASP's
//! minimum parameters, off the async threads and bounded in concurrency), and short-lived
//! HS256 access tokens whose algorithm, issuer, audience, subject and expiry are all
//! checked, with an explicit leeway.

use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use boxoffice_domain::UserId;
use boxoffice_store::users::{UserDirectory, UserError, UserRecord};
use chrono::Utc;
use jsonwebtoken::{Algorithm as JwtAlgorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use validator::Validate;

use crate::error::{ApiError, ApiResult};
use crate::json::Json;
use crate::openapi::Problem;
use crate::state::AppState;

/// OWASP's minimum for argon2id: 19 MiB, 2 iterations, 1 lane.
const ARGON2_M_COST_KIB: u32 = 19 * 1024;
const ARGON2_T_COST: u32 = 2;
const ARGON2_P_COST: u32 = 1;
const _: () = assert!(ARGON2_M_COST_KIB >= 19 * 1024 && ARGON2_T_COST >= 2);
/// Hashes computed at once (each takes ~19 MiB and one core for tens of milliseconds).
pub const HASHES_CONCURRENT_MAX: usize = 2;
pub const PASSWORD_LEN_MIN: u64 = 8;
pub const PASSWORD_LEN_MAX: u64 = 1_024;
/// How long an access token lives.
pub const TOKEN_TTL_SECONDS: u64 = 15 * 60;
/// Clock skew tolerated when checking `exp`.
pub const TOKEN_LEEWAY_SECONDS: u64 = 5;
pub const TOKEN_ISSUER: &str = "boxoffice";
pub const TOKEN_AUDIENCE: &str = "boxoffice-api";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Buyer,
    Organizer,
    Support,
    Auditor,
    Admin,
}

impl Role {
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Buyer => "buyer",
            Role::Organizer => "organizer",
            Role::Support => "support",
            Role::Auditor => "auditor",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        [
            Role::Buyer,
            Role::Organizer,
            Role::Support,
            Role::Auditor,
            Role::Admin,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// Signing and checking tokens, and hashing passwords.
pub struct Auth {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    hashing: Semaphore,
    argon2: Argon2<'static>,
    /// A real hash of a random password, checked when an email is unknown so that the
    /// answer takes as long as for a known one.
    dummy_hash: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    iss: String,
    aud: String,
    exp: u64,
    iat: u64,
    roles: Vec<Role>,
}

impl Auth {
    pub fn new(secret: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= 32,
            "the JWT secret must be at least 32 bytes"
        );
        let mut validation = Validation::new(JwtAlgorithm::HS256);
        validation.algorithms = vec![JwtAlgorithm::HS256];
        validation.set_issuer(&[TOKEN_ISSUER]);
        validation.set_audience(&[TOKEN_AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = TOKEN_LEEWAY_SECONDS;
        validation.validate_exp = true;
        let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
            .map_err(|e| anyhow::anyhow!("argon2 params: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = argon2
            .hash_password(uuid::Uuid::new_v4().to_string().as_bytes())
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
            .to_string();
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            hashing: Semaphore::new(HASHES_CONCURRENT_MAX),
            argon2,
            dummy_hash,
        })
    }

    pub fn issue(&self, user_id: &str, roles: &[Role]) -> anyhow::Result<String> {
        let now = Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: user_id.to_string(),
            iss: TOKEN_ISSUER.into(),
            aud: TOKEN_AUDIENCE.into(),
            exp: now + TOKEN_TTL_SECONDS,
            iat: now,
            roles: roles.to_vec(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(JwtAlgorithm::HS256),
            &claims,
            &self.encoding,
        )?)
    }

    /// The caller `token` stands for, or `None` for any string that is not a valid,
    /// unexpired token of ours: the check the `Caller` extractor makes, public so the
    /// fuzz target `fuzz/fuzz_targets/token.rs` can feed it arbitrary strings.
    pub fn caller_of_token(&self, token: &str) -> Option<Caller> {
        self.check(token)
    }

    fn check(&self, token: &str) -> Option<Caller> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let user_id = data.claims.sub.parse::<UserId>().ok()?;
        Some(Caller {
            user_id,
            roles: data.claims.roles,
        })
    }

    /// Hashes a password on the blocking pool, at most `HASHES_CONCURRENT_MAX` at once.
    pub async fn hash(self: &Arc<Self>, password: String) -> anyhow::Result<String> {
        let _permit = self.hashing.acquire().await?;
        let auth = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            auth.argon2
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    }

    /// Checks a password against a stored hash (or the dummy one), off the async threads.
    async fn verify(self: &Arc<Self>, password: String, hash: Option<String>) -> bool {
        let Ok(_permit) = self.hashing.acquire().await else {
            return false;
        };
        let auth = Arc::clone(self);
        let known = hash.is_some();
        tokio::task::spawn_blocking(move || {
            let hash = hash.unwrap_or_else(|| auth.dummy_hash.clone());
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return false;
            };
            auth.argon2
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
                && known
        })
        .await
        .unwrap_or(false)
    }
}

/// The authenticated caller: a user id and the roles its token carries.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: UserId,
    pub roles: Vec<Role>,
}

impl Caller {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }

    /// 403 unless the caller has one of `roles` (admin has every role).
    pub fn require(&self, roles: &[Role]) -> ApiResult<()> {
        if roles.iter().any(|r| self.has(*r)) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "your role does not allow this",
            ))
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("missing bearer token"))?;
        state
            .auth
            .check(token.trim())
            .ok_or_else(|| ApiError::unauthorized("invalid or expired token"))
    }
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(token))
}

/// A new buyer account.
#[derive(Debug, Deserialize, Validate, ToSchema)]
#[schema(example = json!({"email": "ana@example.com", "password": "correct horse", "display_name": "Ana"}))]
pub struct RegisterBody {
    #[validate(email(message = "must be an email address"), length(max = 254))]
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// 8 to 1024 characters.
    #[validate(length(min = PASSWORD_LEN_MIN, max = PASSWORD_LEN_MAX, message = "must be 8 to 1024 characters"))]
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    #[validate(length(min = 1, max = 200, message = "must be 1 to 200 characters"))]
    #[schema(min_length = 1, max_length = 200)]
    display_name: Option<String>,
}

/// A registered user.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    #[schema(example = "usr_0192f0c4a3b27e61a0c3d0e5b0a1c2d3")]
    pub user_id: String,
    #[schema(example = "ana@example.com")]
    pub email: String,
    #[schema(example = json!(["buyer"]))]
    pub roles: Vec<String>,
    #[schema(required = true)]
    pub display_name: Option<String>,
}

/// An access token.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub access_token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds the token is valid for.
    #[schema(example = 900)]
    pub expires_in: u64,
}

impl RegisterBody {
    pub fn new(email: &str, password: &str, display_name: Option<&str>) -> Self {
        Self {
            email: email.to_string(),
            password: password.to_string(),
            display_name: display_name.map(str::to_string),
        }
    }
}

/// The 422 body for a validator's errors: one `{field, message}` per failed rule.
pub fn validation_error(errors: validator::ValidationErrors) -> ApiError {
    let mut fields = Vec::new();
    for (field, errs) in errors.field_errors() {
        for e in errs {
            let message = e
                .message
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_else(|| format!("is not valid ({})", e.code));
            fields.push(boxoffice_domain::show::FieldError::new(
                field.to_string(),
                message,
            ));
        }
    }
    fields.sort_by(|a, b| a.field.cmp(&b.field));
    ApiError::validation(fields)
}

/// Creates a user with the given roles (always including buyer); used by registration
/// and by `boxoffice user add`.
pub async fn create_user(
    users: &UserDirectory,
    auth: &Arc<Auth>,
    email: &str,
    password: String,
    display_name: Option<String>,
    roles: &[Role],
) -> Result<UserRecord, ApiError> {
    let mut roles: Vec<Role> = roles.to_vec();
    if !roles.contains(&Role::Buyer) {
        roles.insert(0, Role::Buyer);
    }
    let hash = auth.hash(password).await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })?;
    let user = UserRecord {
        user_id: UserId(uuid::Uuid::now_v7()).to_string(),
        email: email.trim().to_lowercase(),
        password_hash: hash,
        display_name,
        roles: roles.iter().map(|r| r.as_str().to_string()).collect(),
        created_at: Utc::now(),
    };
    match users.create(&user).await {
        Ok(()) => Ok(user),
        Err(UserError::EmailTaken) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "email_taken",
            "this email is already registered",
        )),
        Err(UserError::Store(e)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            e.to_string(),
        )),
    }
}

/// Register a buyer
///
/// Creates a user with the `buyer` role. Staff roles are given from the command line
/// (`boxoffice user add`).
#[utoipa::path(
    post,
    path = "/v1/auth/register",
    tag = "auth",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "Registered.", body = UserView,
         headers(("Location" = String, description = "The user's URL."))),
        (status = 409, description = "`email_taken`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "`validation_failed`: a bad email or a password under 8 characters.", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn register(
    State(app): State<AppState>,
    Json(body): Json<RegisterBody>,
) -> ApiResult<Response> {
    body.validate().map_err(validation_error)?;
    let user = create_user(
        &app.users,
        &app.auth,
        &body.email,
        body.password,
        body.display_name,
        &[Role::Buyer],
    )
    .await?;
    let location = format!("/v1/users/{}", user.user_id);
    let body = UserView {
        user_id: user.user_id,
        email: user.email,
        roles: user.roles,
        display_name: user.display_name,
    };
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(body),
    )
        .into_response())
}

/// A user's credentials.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"email": "ana@example.com", "password": "correct horse"}))]
pub struct TokenBody {
    email: String,
    password: String,
}

/// Sign in
///
/// Exchanges an email and password for an access token.
#[utoipa::path(
    post,
    path = "/v1/auth/token",
    tag = "auth",
    request_body = TokenBody,
    responses(
        (status = 200, description = "Signed in.", body = TokenView),
        (status = 401, description = "`invalid_credentials`", body = Problem, content_type = "application/problem+json"),
    )
)]
async fn token(State(app): State<AppState>, Json(body): Json<TokenBody>) -> ApiResult<Response> {
    let invalid = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "wrong email or password",
        )
    };
    if body.password.len() > PASSWORD_LEN_MAX as usize {
        return Err(invalid());
    }
    let user = app
        .users
        .by_email(&body.email.trim().to_lowercase())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                e.to_string(),
            )
        })?;
    let ok = app
        .auth
        .verify(
            body.password,
            user.as_ref().map(|u| u.password_hash.clone()),
        )
        .await;
    let user = user.filter(|_| ok).ok_or_else(invalid)?;
    let roles: Vec<Role> = user.roles.iter().filter_map(|r| Role::parse(r)).collect();
    let token = app.auth.issue(&user.user_id, &roles).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            e.to_string(),
        )
    })?;
    Ok(axum::Json(TokenView {
        access_token: token,
        token_type: "Bearer".into(),
        expires_in: TOKEN_TTL_SECONDS,
    })
    .into_response())
}
