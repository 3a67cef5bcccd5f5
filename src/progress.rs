//! Progress bars for the long commands (`auditor export`, `auditor verify`): on a terminal they
//! show events done, the rate and the time left on standard error; anywhere else (a pipe, a
//! log file, CI) they draw nothing.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `total` events, labelled `what`; hidden unless standard error is a terminal.
pub fn events(what: &str, total: u64) -> ProgressBar {
    bar(
        what,
        total,
        "{msg} [{bar:30}] {human_pos}/{human_len} events, {per_sec}, ETA {eta}",
    )
}

/// A bar over `total` bytes of a file read, labelled `what`.
pub fn bytes(what: &str, total: u64) -> ProgressBar {
    bar(
        what,
        total,
        "{msg} [{bar:30}] {bytes}/{total_bytes}, {bytes_per_sec}, ETA {eta}",
    )
}

fn bar(what: &str, total: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}
