//! The `boxoffice` binary: `serve` (the default), `migrate`, `user add` and `paysim`.

use clap::{Parser, Subcommand};

/// glibc's allocator fragments under the engine's many short-lived batch allocations
/// (measured: malloc_consolidate and unlink_chunk near 10% of the engine benchmark).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "boxoffice",
    version,
    about = "Boxoffice: an event-sourced ticketing backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    config: boxoffice_api::Config,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the HTTP server (the default).
    Serve,
    /// Apply the database migrations and exit.
    Migrate,
    /// Manage users.
    #[command(subcommand)]
    User(UserCmd),
    /// Run the payment provider simulator on its own (Stripe-PaymentIntents-like, with
    /// signed webhooks); `serve` starts one in-process unless `PAYMENT_PROVIDER_URL` is set.
    Paysim(boxoffice_sagas::paysim::PaysimArgs),
}

#[derive(Debug, Subcommand)]
enum UserCmd {
    /// Add a user with a role (organizer, support, auditor, admin; every user is also a buyer).
    Add {
        #[arg(long)]
        email: String,
        #[arg(long)]
        password: String,
        #[arg(long, value_enum)]
        role: Vec<boxoffice_api::auth::Role>,
        #[arg(long)]
        display_name: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        .init();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Cmd::Serve) {
        Cmd::Migrate => {
            // Opening the store applies the backend's migrations.
            let store = boxoffice_store::connect(&cli.config.database_url, None).await?;
            tracing::info!(backend = store.backend(), "migrations applied");
            Ok(())
        }
        Cmd::User(UserCmd::Add {
            email,
            password,
            role,
            display_name,
        }) => {
            let user =
                boxoffice_api::add_user(&cli.config, &email, password, display_name, &role).await?;
            println!("{} {} {}", user.user_id, user.email, user.roles.join(","));
            Ok(())
        }
        Cmd::Paysim(args) => boxoffice_sagas::paysim::run(args).await,
        Cmd::Serve => {
            let app = boxoffice_api::Application::build(cli.config).await?;
            tracing::info!(addr = %app.local_addr(), "listening");
            app.run_until(shutdown_signal()).await
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
