//! Progress bars on stderr for long reads, hidden when the output is for machines
//! (`--json`) or stderr is not a terminal.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over log positions up to `total`, or a spinner counting events when the total
/// is unknown (`None`).
pub fn bar(total: Option<u64>, json: bool, what: &str) -> ProgressBar {
    let bar = match total {
        Some(total) => ProgressBar::new(total).with_style(
            ProgressStyle::with_template(
                "{msg} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
            )
            .expect("a valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template(
                "{spinner} {msg} {pos} events [{elapsed_precise}] ({per_sec})",
            )
            .expect("a valid template"),
        ),
    };
    let bar = bar.with_message(what.to_string());
    if json || !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar
}
