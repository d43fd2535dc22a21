//! The `moa-local` binary: a thin command-line layer over the library.

mod cli;

fn main() -> std::process::ExitCode {
    quiet_on_closed_pipe();
    match cli::main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `moa-local … | head`: when the reader goes away, end quietly like other Unix filters instead of
/// panicking on the next write (Rust ignores SIGPIPE by default). The server keeps ignoring it, so
/// a vanished HTTP client never takes the process down.
fn quiet_on_closed_pipe() {
    #[cfg(unix)]
    if std::env::args().nth(1).as_deref() != Some("serve") {
        // SAFETY: restoring the default disposition of one signal before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
}
