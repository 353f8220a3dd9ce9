//! Progress bars on stderr for the loops that take a while (training, log generation, vocabulary
//! building, evaluation): elapsed time, position, total and an estimate of the time left.
//! indicatif draws them only when stderr is a terminal, so logs and tests see nothing.

/// A bar over `total` units, labelled `what`, starting at `start`.
pub(crate) fn bar(total: u64, start: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    let template = format!("{what}{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} eta {{eta}} {{msg}}");
    bar.set_style(indicatif::ProgressStyle::with_template(&template).unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()).progress_chars("=> "));
    bar.set_position(start);
    bar
}
