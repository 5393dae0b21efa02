//! The user directory: registered users and their roles, in a plain table next to the
//! event log (credentials must be changeable and erasable; events are neither). Opened
//! from the same URL as the event store, whose connect applies the migrations.

use chrono::{DateTime, Utc};
use sqlx::Row;

use crate::tables::{TablePool, unavailable};
use crate::{StoreError, StoreResult};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user_id: String,
    /// Lowercased.
    pub email: String,
    /// A PHC string (argon2id).
    pub password_hash: String,
    pub display_name: Option<String>,
    pub roles: Vec<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("the email is already registered")]
    EmailTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub struct UserDirectory {
    pool: TablePool,
}

/// A unique violation of the email constraint, by SQLSTATE / extended code and name.
fn is_email_taken(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else {
        return false;
    };
    let code = db.code();
    let unique = matches!(code.as_deref(), Some("23505") | Some("2067"));
    let named = db.constraint().is_none_or(|c| c == "users_email_key")
        || db.message().contains("users.email");
    unique && named
}

impl UserDirectory {
    /// Opens the directory of the store at `url` (the event store's connect has applied
    /// the migrations that create its table).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Ok(Self::new(TablePool::connect(url).await?))
    }

    pub fn new(pool: TablePool) -> Self {
        Self { pool }
    }

    pub async fn create(&self, user: &UserRecord) -> Result<(), UserError> {
        let roles = user.roles.join(",");
        let result = match &self.pool {
            TablePool::Postgres(pool) => sqlx::query(
                "INSERT INTO users (user_id, email, password_hash, display_name, roles, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&user.user_id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(&user.display_name)
            .bind(&roles)
            .bind(user.created_at)
            .execute(pool)
            .await
            .map(|_| ()),
            TablePool::Sqlite(pool) => sqlx::query(
                "INSERT INTO users (user_id, email, password_hash, display_name, roles, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .bind(&user.user_id)
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(&user.display_name)
            .bind(&roles)
            .bind(user.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .execute(pool)
            .await
            .map(|_| ()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) if is_email_taken(&e) => Err(UserError::EmailTaken),
            Err(e) => Err(UserError::Store(unavailable(e))),
        }
    }

    pub async fn by_email(&self, email: &str) -> StoreResult<Option<UserRecord>> {
        self.find("email", email).await
    }

    pub async fn by_id(&self, user_id: &str) -> StoreResult<Option<UserRecord>> {
        self.find("user_id", user_id).await
    }

    async fn find(&self, column: &'static str, value: &str) -> StoreResult<Option<UserRecord>> {
        let columns = "user_id, email, password_hash, display_name, roles, created_at";
        let row = match &self.pool {
            TablePool::Postgres(pool) => {
                let sql = format!("SELECT {columns} FROM users WHERE {column} = $1");
                let row = sqlx::query(&sql)
                    .bind(value)
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
                row.map(|r| -> Result<UserRecord, sqlx::Error> {
                    Ok(UserRecord {
                        user_id: r.try_get("user_id")?,
                        email: r.try_get("email")?,
                        password_hash: r.try_get("password_hash")?,
                        display_name: r.try_get("display_name")?,
                        roles: split_roles(r.try_get("roles")?),
                        created_at: r.try_get("created_at")?,
                    })
                })
            }
            TablePool::Sqlite(pool) => {
                let sql = format!("SELECT {columns} FROM users WHERE {column} = ?1");
                let row = sqlx::query(&sql)
                    .bind(value)
                    .fetch_optional(pool)
                    .await
                    .map_err(unavailable)?;
                row.map(|r| -> Result<UserRecord, sqlx::Error> {
                    let created_at: String = r.try_get("created_at")?;
                    Ok(UserRecord {
                        user_id: r.try_get("user_id")?,
                        email: r.try_get("email")?,
                        password_hash: r.try_get("password_hash")?,
                        display_name: r.try_get("display_name")?,
                        roles: split_roles(r.try_get("roles")?),
                        created_at: DateTime::parse_from_rfc3339(&created_at)
                            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?
                            .with_timezone(&Utc),
                    })
                })
            }
        };
        row.transpose()
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

fn split_roles(roles: String) -> Vec<String> {
    roles
        .split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}
