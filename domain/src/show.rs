//! The Show aggregate (`show-{show_id}`): catalogue data, layout, tiers, limits, sales
//! window and cancellation. The layout is fixed when the show is scheduled; the seat and
//! pool streams of the show are derived from it.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::ids::{ShowId, UserId};
use crate::money::{AMOUNT_MINOR_MAX, Minor};

/// Seats a show may have in its seated sections (the contract's limit).
pub const SEATS_PER_SHOW_MAX: u32 = 200_000;
/// Capacity of one general-admission section.
pub const GA_CAPACITY_MAX: u32 = 1_000_000;
pub const SECTIONS_PER_SHOW_MAX: usize = 500;
pub const ROWS_PER_SECTION_MAX: usize = 1_000;
pub const SEATS_PER_ROW_MAX: u32 = 2_000;
pub const TIERS_PER_SHOW_MAX: usize = 100;
pub const NAME_LEN_MAX: usize = 200;
pub const LABEL_LEN_MAX: usize = 16;

pub const MAX_TICKETS_PER_USER_DEFAULT: u32 = 8;
pub const MAX_TICKETS_PER_USER_MAX: u32 = 100;
pub const HOLD_TTL_SECONDS_DEFAULT: u32 = 300;
pub const HOLD_TTL_SECONDS_MIN: u32 = 10;
pub const HOLD_TTL_SECONDS_MAX: u32 = 3_600;
pub const PAYMENT_TIMEOUT_SECONDS_DEFAULT: u32 = 120;
pub const PAYMENT_TIMEOUT_SECONDS_MIN: u32 = 5;
pub const PAYMENT_TIMEOUT_SECONDS_MAX: u32 = 3_600;
pub const WAITLIST_CLAIM_SECONDS_DEFAULT: u32 = 600;
pub const WAITLIST_CLAIM_SECONDS_MIN: u32 = 10;
pub const WAITLIST_CLAIM_SECONDS_MAX: u32 = 86_400;
pub const ACTIVE_HOLDS_PER_USER_DEFAULT: u32 = 3;
pub const ACTIVE_HOLDS_PER_USER_MAX: u32 = 20;

const _: () = assert!(SEATS_PER_ROW_MAX <= SEATS_PER_SHOW_MAX);
const _: () = assert!(
    HOLD_TTL_SECONDS_MIN <= HOLD_TTL_SECONDS_DEFAULT
        && HOLD_TTL_SECONDS_DEFAULT <= HOLD_TTL_SECONDS_MAX
);
const _: () = assert!(crate::policy::SEATS_PER_HOLD_MAX <= MAX_TICKETS_PER_USER_MAX);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Venue {
    pub name: String,
    pub city: String,
    pub country: String,
    pub timezone: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub max_tickets_per_user: u32,
    pub hold_ttl_seconds: u32,
    pub payment_timeout_seconds: u32,
    pub waitlist_claim_seconds: u32,
    #[serde(default = "default_active_holds")]
    pub max_active_holds_per_user: u32,
}

fn default_active_holds() -> u32 {
    ACTIVE_HOLDS_PER_USER_DEFAULT
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_tickets_per_user: MAX_TICKETS_PER_USER_DEFAULT,
            hold_ttl_seconds: HOLD_TTL_SECONDS_DEFAULT,
            payment_timeout_seconds: PAYMENT_TIMEOUT_SECONDS_DEFAULT,
            waitlist_claim_seconds: WAITLIST_CLAIM_SECONDS_DEFAULT,
            max_active_holds_per_user: ACTIVE_HOLDS_PER_USER_DEFAULT,
        }
    }
}

impl Limits {
    pub fn hold_ttl(&self) -> Duration {
        Duration::seconds(i64::from(self.hold_ttl_seconds))
    }

    pub fn payment_timeout(&self) -> Duration {
        Duration::seconds(i64::from(self.payment_timeout_seconds))
    }

    pub fn waitlist_claim(&self) -> Duration {
        Duration::seconds(i64::from(self.waitlist_claim_seconds))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTier {
    pub id: String,
    pub name: String,
    /// Price in minor units.
    pub price: Minor,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowDef {
    pub row: String,
    pub seats: u32,
    pub tier: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SectionLayout {
    Seated { rows: Vec<RowDef> },
    GeneralAdmission { capacity: u32, tier: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SectionDef {
    pub id: String,
    pub name: String,
    #[serde(flatten)]
    pub layout: SectionLayout,
}

impl SectionDef {
    pub fn capacity(&self) -> u32 {
        match &self.layout {
            SectionLayout::Seated { rows } => rows.iter().map(|r| r.seats).sum(),
            SectionLayout::GeneralAdmission { capacity, .. } => *capacity,
        }
    }

    pub fn is_general_admission(&self) -> bool {
        matches!(self.layout, SectionLayout::GeneralAdmission { .. })
    }
}

/// Everything an organizer says about a show when scheduling it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowDefinition {
    pub name: String,
    pub venue: Venue,
    pub starts_at: DateTime<Utc>,
    pub currency: String,
    pub sales_open_at: Option<DateTime<Utc>>,
    pub sales_close_at: Option<DateTime<Utc>>,
    pub limits: Limits,
    pub price_tiers: Vec<PriceTier>,
    pub sections: Vec<SectionDef>,
}

/// One invalid field of a request, named by its JSON path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Labels (section ids, row labels, tier ids) are short and use no `-`, because seat ids
/// are `{section}-{row}-{number}` and must split back unambiguously.
fn valid_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= LABEL_LEN_MAX
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn check_range(errors: &mut Vec<FieldError>, field: &str, value: u32, min: u32, max: u32) {
    if value < min || value > max {
        errors.push(FieldError::new(
            field,
            format!("must be between {min} and {max}"),
        ));
    }
}

impl ShowDefinition {
    /// Every problem with the definition, or none.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.name.trim().is_empty() || self.name.chars().count() > NAME_LEN_MAX {
            errors.push(FieldError::new(
                "name",
                format!("must be 1 to {NAME_LEN_MAX} characters"),
            ));
        }
        for (field, value) in [
            ("venue.name", &self.venue.name),
            ("venue.city", &self.venue.city),
            ("venue.country", &self.venue.country),
            ("venue.timezone", &self.venue.timezone),
        ] {
            if value.trim().is_empty() || value.chars().count() > NAME_LEN_MAX {
                errors.push(FieldError::new(
                    field,
                    format!("must be 1 to {NAME_LEN_MAX} characters"),
                ));
            }
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            errors.push(FieldError::new(
                "currency",
                "must be an ISO 4217 code such as EUR",
            ));
        }
        if let (Some(open), Some(close)) = (self.sales_open_at, self.sales_close_at)
            && close <= open
        {
            errors.push(FieldError::new(
                "sales_close_at",
                "must be after sales_open_at",
            ));
        }
        let l = &self.limits;
        check_range(
            &mut errors,
            "limits.max_tickets_per_user",
            l.max_tickets_per_user,
            1,
            MAX_TICKETS_PER_USER_MAX,
        );
        check_range(
            &mut errors,
            "limits.hold_ttl_seconds",
            l.hold_ttl_seconds,
            HOLD_TTL_SECONDS_MIN,
            HOLD_TTL_SECONDS_MAX,
        );
        check_range(
            &mut errors,
            "limits.payment_timeout_seconds",
            l.payment_timeout_seconds,
            PAYMENT_TIMEOUT_SECONDS_MIN,
            PAYMENT_TIMEOUT_SECONDS_MAX,
        );
        check_range(
            &mut errors,
            "limits.waitlist_claim_seconds",
            l.waitlist_claim_seconds,
            WAITLIST_CLAIM_SECONDS_MIN,
            WAITLIST_CLAIM_SECONDS_MAX,
        );
        check_range(
            &mut errors,
            "limits.max_active_holds_per_user",
            l.max_active_holds_per_user,
            1,
            ACTIVE_HOLDS_PER_USER_MAX,
        );

        if self.price_tiers.is_empty() || self.price_tiers.len() > TIERS_PER_SHOW_MAX {
            errors.push(FieldError::new(
                "price_tiers",
                format!("must list 1 to {TIERS_PER_SHOW_MAX} tiers"),
            ));
        }
        let mut tier_ids = HashSet::new();
        for (i, tier) in self.price_tiers.iter().enumerate() {
            if !valid_label(&tier.id) {
                errors.push(FieldError::new(
                    format!("price_tiers[{i}].id"),
                    "must be 1 to 16 letters, digits or _",
                ));
            } else if !tier_ids.insert(tier.id.as_str()) {
                errors.push(FieldError::new(
                    format!("price_tiers[{i}].id"),
                    "duplicate tier id",
                ));
            }
            if tier.name.trim().is_empty() || tier.name.chars().count() > NAME_LEN_MAX {
                errors.push(FieldError::new(
                    format!("price_tiers[{i}].name"),
                    "must be 1 to 200 characters",
                ));
            }
            if tier.price.0 < 0 {
                errors.push(FieldError::new(
                    format!("price_tiers[{i}].price"),
                    "must not be negative",
                ));
            } else if tier.price.0 > AMOUNT_MINOR_MAX {
                errors.push(FieldError::new(
                    format!("price_tiers[{i}].price"),
                    "is too large",
                ));
            }
        }

        if self.sections.is_empty() || self.sections.len() > SECTIONS_PER_SHOW_MAX {
            errors.push(FieldError::new(
                "sections",
                format!("must list 1 to {SECTIONS_PER_SHOW_MAX} sections"),
            ));
        }
        let mut section_ids = HashSet::new();
        let mut seats_total: u64 = 0;
        for (i, section) in self.sections.iter().enumerate() {
            if !valid_label(&section.id) {
                errors.push(FieldError::new(
                    format!("sections[{i}].id"),
                    "must be 1 to 16 letters, digits or _",
                ));
            } else if !section_ids.insert(section.id.as_str()) {
                errors.push(FieldError::new(
                    format!("sections[{i}].id"),
                    "duplicate section id",
                ));
            }
            if section.name.trim().is_empty() || section.name.chars().count() > NAME_LEN_MAX {
                errors.push(FieldError::new(
                    format!("sections[{i}].name"),
                    "must be 1 to 200 characters",
                ));
            }
            match &section.layout {
                SectionLayout::Seated { rows } => {
                    if rows.is_empty() || rows.len() > ROWS_PER_SECTION_MAX {
                        errors.push(FieldError::new(
                            format!("sections[{i}].rows"),
                            format!("must list 1 to {ROWS_PER_SECTION_MAX} rows"),
                        ));
                    }
                    let mut row_labels = HashSet::new();
                    for (j, row) in rows.iter().enumerate() {
                        if !valid_label(&row.row) {
                            errors.push(FieldError::new(
                                format!("sections[{i}].rows[{j}].row"),
                                "must be 1 to 16 letters, digits or _",
                            ));
                        } else if !row_labels.insert(row.row.as_str()) {
                            errors.push(FieldError::new(
                                format!("sections[{i}].rows[{j}].row"),
                                "duplicate row",
                            ));
                        }
                        if row.seats == 0 || row.seats > SEATS_PER_ROW_MAX {
                            errors.push(FieldError::new(
                                format!("sections[{i}].rows[{j}].seats"),
                                format!("must be between 1 and {SEATS_PER_ROW_MAX}"),
                            ));
                        }
                        if !tier_ids.contains(row.tier.as_str()) {
                            errors.push(FieldError::new(
                                format!("sections[{i}].rows[{j}].tier"),
                                "unknown tier",
                            ));
                        }
                        seats_total += u64::from(row.seats);
                    }
                }
                SectionLayout::GeneralAdmission { capacity, tier } => {
                    if *capacity == 0 || *capacity > GA_CAPACITY_MAX {
                        errors.push(FieldError::new(
                            format!("sections[{i}].capacity"),
                            format!("must be between 1 and {GA_CAPACITY_MAX}"),
                        ));
                    }
                    if !tier_ids.contains(tier.as_str()) {
                        errors.push(FieldError::new(
                            format!("sections[{i}].tier"),
                            "unknown tier",
                        ));
                    }
                }
            }
        }
        if seats_total > u64::from(SEATS_PER_SHOW_MAX) {
            errors.push(FieldError::new(
                "sections",
                format!("a show has at most {SEATS_PER_SHOW_MAX} seats"),
            ));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn tier(&self, id: &str) -> Option<&PriceTier> {
        self.price_tiers.iter().find(|t| t.id == id)
    }

    pub fn section(&self, id: &str) -> Option<&SectionDef> {
        self.sections.iter().find(|s| s.id == id)
    }
}

/// Where a show stands for buyers at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShowStatus {
    Scheduled,
    OnSale,
    SoldOut,
    SalesClosed,
    Cancelled,
}

/// The show aggregate's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Show {
    pub show_id: ShowId,
    pub organizer_id: UserId,
    pub definition: ShowDefinition,
    pub cancelled: bool,
    /// How many events the show's stream has: the show's version for `If-Match`.
    pub version: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ShowEvent {
    ShowScheduled {
        show_id: ShowId,
        organizer_id: UserId,
        #[serde(flatten)]
        definition: Box<ShowDefinition>,
    },
    ShowRescheduled {
        starts_at: DateTime<Utc>,
    },
    /// An addition to the contract's names: the organizer renamed the show.
    ShowRenamed {
        name: String,
    },
    SalesWindowChanged {
        sales_open_at: Option<DateTime<Utc>>,
        sales_close_at: Option<DateTime<Utc>>,
    },
    TierPriceChanged {
        tier_id: String,
        price: Minor,
    },
    ShowCancelled {
        reason: String,
    },
}

impl ShowEvent {
    pub const TYPES: [&'static str; 6] = [
        "ShowScheduled",
        "ShowRescheduled",
        "ShowRenamed",
        "SalesWindowChanged",
        "TierPriceChanged",
        "ShowCancelled",
    ];

    pub fn event_type(&self) -> &'static str {
        match self {
            ShowEvent::ShowScheduled { .. } => "ShowScheduled",
            ShowEvent::ShowRescheduled { .. } => "ShowRescheduled",
            ShowEvent::ShowRenamed { .. } => "ShowRenamed",
            ShowEvent::SalesWindowChanged { .. } => "SalesWindowChanged",
            ShowEvent::TierPriceChanged { .. } => "TierPriceChanged",
            ShowEvent::ShowCancelled { .. } => "ShowCancelled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShowCommand {
    Schedule {
        show_id: ShowId,
        organizer_id: UserId,
        definition: Box<ShowDefinition>,
    },
    Reschedule {
        starts_at: DateTime<Utc>,
    },
    Rename {
        name: String,
    },
    ChangeSalesWindow {
        sales_open_at: Option<DateTime<Utc>>,
        sales_close_at: Option<DateTime<Utc>>,
    },
    ChangeTierPrice {
        tier_id: String,
        price: Minor,
    },
    Cancel {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShowError {
    #[error("the show is already scheduled")]
    AlreadyScheduled,
    #[error("the show does not exist")]
    NotScheduled,
    #[error("the show is cancelled")]
    Cancelled,
    #[error("invalid show")]
    Invalid(Vec<FieldError>),
}

impl Show {
    /// Decides a show command against the current state (`None`: not scheduled yet).
    pub fn decide(state: Option<&Show>, command: ShowCommand) -> Result<ShowEvent, ShowError> {
        let (show, command) = match (state, command) {
            (
                None,
                ShowCommand::Schedule {
                    show_id,
                    organizer_id,
                    definition,
                },
            ) => {
                definition.validate().map_err(ShowError::Invalid)?;
                return Ok(ShowEvent::ShowScheduled {
                    show_id,
                    organizer_id,
                    definition,
                });
            }
            (Some(_), ShowCommand::Schedule { .. }) => return Err(ShowError::AlreadyScheduled),
            (None, _) => return Err(ShowError::NotScheduled),
            (Some(show), _) if show.cancelled => return Err(ShowError::Cancelled),
            (Some(show), command) => (show, command),
        };
        let mut definition = show.definition.clone();
        let event = match command {
            ShowCommand::Schedule { .. } => unreachable!("handled above"),
            ShowCommand::Reschedule { starts_at } => {
                definition.starts_at = starts_at;
                ShowEvent::ShowRescheduled { starts_at }
            }
            ShowCommand::Rename { name } => {
                definition.name = name.clone();
                ShowEvent::ShowRenamed { name }
            }
            ShowCommand::ChangeSalesWindow {
                sales_open_at,
                sales_close_at,
            } => {
                definition.sales_open_at = sales_open_at;
                definition.sales_close_at = sales_close_at;
                ShowEvent::SalesWindowChanged {
                    sales_open_at,
                    sales_close_at,
                }
            }
            ShowCommand::ChangeTierPrice { tier_id, price } => {
                match definition.price_tiers.iter_mut().find(|t| t.id == tier_id) {
                    Some(tier) => tier.price = price,
                    None => {
                        return Err(ShowError::Invalid(vec![FieldError::new(
                            "tier_id",
                            "unknown tier",
                        )]));
                    }
                }
                ShowEvent::TierPriceChanged { tier_id, price }
            }
            ShowCommand::Cancel { reason } => return Ok(ShowEvent::ShowCancelled { reason }),
        };
        // A change is only accepted if the show it leaves behind is still valid.
        definition.validate().map_err(ShowError::Invalid)?;
        Ok(event)
    }

    /// Applies a show event. Cannot fail; an event that cannot apply means the log is
    /// wrong, and that stops the show (asserted).
    pub fn apply(state: &mut Option<Show>, event: &ShowEvent) {
        match event {
            ShowEvent::ShowScheduled {
                show_id,
                organizer_id,
                definition,
            } => {
                assert!(state.is_none(), "ShowScheduled for a show that exists");
                *state = Some(Show {
                    show_id: *show_id,
                    organizer_id: *organizer_id,
                    definition: (**definition).clone(),
                    cancelled: false,
                    version: 1,
                });
            }
            other => {
                let show = state.as_mut().expect("show event before ShowScheduled");
                show.version += 1;
                match other {
                    ShowEvent::ShowScheduled { .. } => unreachable!(),
                    ShowEvent::ShowRescheduled { starts_at } => {
                        show.definition.starts_at = *starts_at
                    }
                    ShowEvent::ShowRenamed { name } => show.definition.name = name.clone(),
                    ShowEvent::SalesWindowChanged {
                        sales_open_at,
                        sales_close_at,
                    } => {
                        show.definition.sales_open_at = *sales_open_at;
                        show.definition.sales_close_at = *sales_close_at;
                    }
                    ShowEvent::TierPriceChanged { tier_id, price } => {
                        let tier = show
                            .definition
                            .price_tiers
                            .iter_mut()
                            .find(|t| &t.id == tier_id)
                            .expect("TierPriceChanged for an unknown tier");
                        tier.price = *price;
                    }
                    ShowEvent::ShowCancelled { .. } => show.cancelled = true,
                }
            }
        }
    }

    /// Whether holds may be placed at `now` (the sales window is open and the show is
    /// neither cancelled nor started).
    pub fn sales_open(&self, now: DateTime<Utc>) -> bool {
        let d = &self.definition;
        !self.cancelled
            && d.sales_open_at.is_none_or(|open| now >= open)
            && d.sales_close_at.is_none_or(|close| now < close)
            && now < d.starts_at
    }

    /// The status buyers see, given whether anything is left to sell.
    pub fn status(&self, now: DateTime<Utc>, anything_available: bool) -> ShowStatus {
        let d = &self.definition;
        if self.cancelled {
            ShowStatus::Cancelled
        } else if d.sales_open_at.is_some_and(|open| now < open) {
            ShowStatus::Scheduled
        } else if !self.sales_open(now) {
            ShowStatus::SalesClosed
        } else if !anything_available {
            ShowStatus::SoldOut
        } else {
            ShowStatus::OnSale
        }
    }
}
