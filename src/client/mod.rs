//! `auditor events …`: a client of a running server's HTTP API, for people at a terminal and
//! for scripts. It reads the server's address and credentials from flags or the environment
//! (`AUDITOR_URL`; `AUDITOR_TOKEN`, or `AUDITOR_USER` and `AUDITOR_PASSWORD`), prints a table
//! on a terminal and one JSON object per line otherwise.

pub mod filters;
mod output;
mod remote;

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Subcommand;

pub use filters::FilterArgs;
pub use remote::{ClientError, Remote};

/// Where the server is and who is asking.
#[derive(Debug, Clone, clap::Args)]
pub struct Connection {
    /// The server's base URL.
    #[arg(long, env = "AUDITOR_URL", default_value = "http://127.0.0.1:5000")]
    pub server: String,
    /// The tenant to act in, for credentials of every tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// A PEM certificate to trust for the server's TLS, besides the system's roots.
    #[arg(long, env = "AUDITOR_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Query events: a page, or with --all every match, in `seq` order.
    Query {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: FilterArgs,
        /// Events per page (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Newest first.
        #[arg(long)]
        desc: bool,
        /// Follow the cursor to the last page.
        #[arg(long)]
        all: bool,
    },
    /// Show one event by id.
    Get {
        #[command(flatten)]
        connection: Connection,
        /// The event's id (a UUID).
        id: String,
    },
    /// Follow the log live (GET /events/stream) until interrupted, reconnecting after the last
    /// event seen when the connection drops.
    Tail {
        #[command(flatten)]
        connection: Connection,
        #[command(flatten)]
        filters: FilterArgs,
        /// Begin after this `seq` (0: from the start) instead of with new events.
        #[arg(long, value_name = "SEQ")]
        after: Option<u64>,
    },
}

/// Runs an `auditor events` command, printing to standard output.
pub async fn run(command: EventsCommand) -> Result<(), ClientError> {
    let terminal = std::io::stdout().is_terminal();
    let mut out = output::Printer::new(std::io::stdout().lock(), terminal);
    match command {
        EventsCommand::Query {
            connection,
            filters,
            limit,
            desc,
            all,
        } => {
            let remote = Remote::connect(&connection)?;
            let mut pairs = filters.pairs;
            pairs.push(("limit".into(), limit.to_string()));
            if desc {
                pairs.push(("order".into(), "desc".into()));
            }
            let mut cursor = None;
            loop {
                let page = remote.query(&pairs, cursor.as_deref()).await?;
                for event in &page.events {
                    out.event(event)?;
                }
                cursor = page.next_cursor;
                if !all || cursor.is_none() {
                    break;
                }
            }
            if let Some(cursor) = cursor {
                out.note(&format!(
                    "more: --all, or the next page's cursor is {cursor}"
                ))?;
            }
            out.finish()
        }
        EventsCommand::Get { connection, id } => {
            let event = Remote::connect(&connection)?.get(&id).await?;
            out.one(&event)
        }
        EventsCommand::Tail {
            connection,
            filters,
            after,
        } => {
            let remote = Remote::connect(&connection)?;
            remote
                .tail(&filters.pairs, after, |event| out.event(event))
                .await
        }
    }
}
