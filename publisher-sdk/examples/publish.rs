//! Publishes one notification from the command line.
//!
//! ```sh
//! cargo run -p tidings-publisher --example publish -- \
//!   --redis-url redis://127.0.0.1:6379 --user alice --event hello --payload '{"text":"hi"}'
//! ```

use clap::Parser;
use publisher::Publisher;

#[derive(Parser)]
struct Args {
    /// Redis URL the gateways use.
    #[arg(
        long,
        env = "TIDINGS_REDIS_URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    redis_url: String,
    /// Namespace of Redis names (the gateways' --redis-namespace).
    #[arg(long, default_value = "tidings")]
    namespace: String,
    /// Target users (comma-separated).
    #[arg(long, value_delimiter = ',')]
    user: Vec<String>,
    /// Target channels (comma-separated).
    #[arg(long, value_delimiter = ',')]
    channel: Vec<String>,
    /// Send to everyone.
    #[arg(long)]
    broadcast: bool,
    #[arg(long, default_value = "message")]
    event: String,
    /// JSON payload.
    #[arg(long, default_value = "null")]
    payload: String,
    /// Optional message id.
    #[arg(long)]
    id: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let publisher = Publisher::builder(args.redis_url)
        .namespace(args.namespace)
        .build()?;
    let publish = match (
        args.user.is_empty(),
        args.channel.is_empty(),
        args.broadcast,
    ) {
        (false, true, false) => publisher.to_users(args.user),
        (true, false, false) => publisher.to_channels(args.channel),
        (true, true, true) => publisher.broadcast(),
        _ => anyhow::bail!("give exactly one of --user, --channel or --broadcast"),
    };
    let mut publish = publish.event(args.event).raw_payload(args.payload);
    if let Some(id) = args.id {
        publish = publish.id(id);
    }
    let receipt = publish.send().await?;
    println!(
        "published to {} target(s), received by {} gateway node(s)",
        receipt.per_target.len(),
        receipt.nodes
    );
    Ok(())
}
