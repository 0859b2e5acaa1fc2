//! Progress on standard error: an indicatif bar on a terminal, a line per tenth of a stage
//! elsewhere, nothing with `--quiet`.

use indicatif::{ProgressBar, ProgressStyle};
use quantsmith::Progress;
use std::io::IsTerminal;

/// An indicatif bar on a terminal. Elsewhere (CI logs, pipes) writing is silent and a counted
/// stage (calibration text, calibration layers) prints a line at every tenth of the way and at
/// its end, with the elapsed time. `--quiet`: nothing.
pub struct Bar(Option<Mode>);

enum Mode {
    Terminal(ProgressBar),
    Lines(std::sync::Mutex<Stage>),
}

#[derive(Default)]
struct Stage {
    what: String,
    total: u64,
    done: u64,
    printed_tenths: u64,
    started: Option<std::time::Instant>,
}

impl Bar {
    pub fn new(quiet: bool) -> Bar {
        if quiet {
            return Bar(None);
        }
        if !std::io::stderr().is_terminal() {
            return Bar(Some(Mode::Lines(Default::default())));
        }
        let pb = ProgressBar::new(0);
        pb.set_style(Self::bytes_style());
        Bar(Some(Mode::Terminal(pb)))
    }

    fn bytes_style() -> ProgressStyle {
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
    }
}

impl Progress for Bar {
    fn start(&self, total: u64) {
        if let Some(Mode::Terminal(p)) = &self.0 {
            p.set_style(Self::bytes_style());
            p.set_message("");
            p.reset();
            p.set_length(total);
            p.set_position(0);
        }
    }
    fn inc(&self, n: u64) {
        if let Some(Mode::Terminal(p)) = &self.0 {
            p.inc(n);
        }
    }
    fn finish(&self) {
        match &self.0 {
            Some(Mode::Terminal(p)) => p.finish_and_clear(),
            Some(Mode::Lines(st)) => {
                let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(t0) = st.started.take() {
                    eprintln!(
                        "{}: {}/{} done in {:.1} s",
                        st.what,
                        st.done,
                        st.total,
                        t0.elapsed().as_secs_f64()
                    );
                }
            }
            None => {}
        }
    }
    fn stage(&self, what: &str, total: u64) {
        match &self.0 {
            Some(Mode::Terminal(p)) => {
                p.set_style(
                    ProgressStyle::with_template(
                        "{spinner} [{elapsed_precise}] {msg} {wide_bar} {pos}/{len} eta {eta}",
                    )
                    .expect("valid template"),
                );
                p.reset();
                p.set_message(what.to_string());
                p.set_length(total);
                p.set_position(0);
            }
            Some(Mode::Lines(st)) => {
                let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
                *st = Stage {
                    what: what.to_string(),
                    total,
                    started: Some(std::time::Instant::now()),
                    ..Default::default()
                };
            }
            None => {}
        }
    }
    fn step(&self, n: u64) {
        match &self.0 {
            Some(Mode::Terminal(p)) => p.inc(n),
            Some(Mode::Lines(st)) => {
                let mut st = st.lock().unwrap_or_else(|e| e.into_inner());
                st.done += n;
                let tenths = (st.done * 10).checked_div(st.total).unwrap_or(10);
                if tenths > st.printed_tenths && st.done < st.total {
                    st.printed_tenths = tenths;
                    let secs = st.started.map_or(0.0, |t| t.elapsed().as_secs_f64());
                    eprintln!("{}: {}/{} ({secs:.1} s)", st.what, st.done, st.total);
                }
            }
            None => {}
        }
    }
}

/// The process's peak resident memory (Linux `VmHWM`), if known.
pub fn peak_rss_mb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024)
}
