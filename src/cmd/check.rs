//! `check --config FILE`: validates the configuration, shows what each entry matches now,
//! reaches each intake, and prints what `run` would do. Every problem is listed with its
//! fix; the exit status is non-zero if there is any.

use crate::config::Config;
use crate::intake::{Answer, Sender};
use crate::run::spool_dir;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::path::Path;

/// Runs the checks, printing to stdout. `Ok(true)` when everything is fine.
pub fn run(config: &Path) -> Result<bool, String> {
    let cfg = Config::load(config)?;
    let mut problems: Vec<String> = Vec::new();
    println!("config {}: valid", config.display());
    for w in &cfg.warnings {
        println!("  warning: {w}");
    }
    println!(
        "intake: {} (timeout {}s{}{}{})",
        cfg.intake_url,
        cfg.request_timeout.as_secs(),
        cfg.ca_file
            .as_ref()
            .map_or(String::new(), |c| format!(", CA {}", c.display())),
        cfg.client_cert.as_ref().map_or(String::new(), |c| format!(
            ", client cert {}",
            c.0.display()
        )),
        cfg.proxy.as_ref().map_or(String::new(), |p| format!(
            ", proxy {}",
            without_credentials(p)
        ))
    );
    println!(
        "batches: up to {} bytes / {} events / {:?} linger, gzip level {}, {:?} form",
        cfg.batch.max_bytes, cfg.batch.max_events, cfg.batch.linger, cfg.batch.level, cfg.format
    );
    check_state_dir(&cfg, &mut problems);
    match cfg.metrics_address {
        Some(a) => println!("metrics: http://{a}/metrics and /healthz"),
        None => println!("metrics: off"),
    }

    for (i, l) in cfg.logfiles.iter().enumerate() {
        println!(
            "logfiles[{i}]: {} (key from {}, {} rule(s))",
            l.filepath,
            l.key_source,
            l.rules.len()
        );
        check_files(&l.filepath, &mut problems);
        let spool = spool_dir(&cfg.state_dir, &l.filepath);
        println!(
            "  spool: {} (cap {} bytes{})",
            spool.display(),
            cfg.spool_share(),
            if spool.is_dir() {
                ""
            } else {
                "; `run` creates it"
            }
        );
        check_intake(&cfg, l, &mut problems);
    }
    if problems.is_empty() {
        println!(
            "\nok: `kube-audit-shipper run --config {}` would ship as above",
            config.display()
        );
        Ok(true)
    } else {
        println!("\n{} problem(s):", problems.len());
        for p in &problems {
            println!("  - {p}");
        }
        Ok(false)
    }
}

/// What `run` would do with the state directory, found without changing anything: `check`
/// may run on a production node beside the service, and must not create directories or
/// files there (nor take the service's lock).
fn check_state_dir(cfg: &Config, problems: &mut Vec<String>) {
    let dir = &cfg.state_dir;
    let fix = "create it for the service's user (mode 0700), or set `state_dir:` to a \
               writable directory";
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => match writable(dir) {
            Ok(()) => println!(
                "state_dir: {} (exists, writable by this user{})",
                dir.display(),
                if lock_is_held(dir) {
                    "; in use by a running kube-audit-shipper"
                } else {
                    ""
                }
            ),
            Err(e) => problems.push(format!(
                "state_dir {}: not writable by this user ({e}); {fix}",
                dir.display()
            )),
        },
        Ok(_) => problems.push(format!(
            "state_dir {}: exists and is not a directory; {fix}",
            dir.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let existing = dir
                .ancestors()
                .skip(1)
                .find(|a| a.is_dir())
                .unwrap_or(Path::new("/"));
            match writable(existing) {
                Ok(()) => println!(
                    "state_dir: {} does not exist; `run` will create it (mode 0700) in {} \
                     (writable by this user)",
                    dir.display(),
                    existing.display()
                ),
                Err(e) => problems.push(format!(
                    "state_dir {}: does not exist, and `run` cannot create it: {} is not \
                     writable by this user ({e}); {fix}",
                    dir.display(),
                    existing.display()
                )),
            }
        }
        Err(e) => problems.push(format!("state_dir {}: {e}; {fix}", dir.display())),
    }
}

/// Whether this user may create entries in `dir` (the kernel's verdict for the effective
/// user, including a read-only filesystem), without creating one.
fn writable(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path; faccessat only reads it.
    let rc = unsafe {
        libc::faccessat(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::W_OK | libc::X_OK,
            libc::AT_EACCESS,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a running service holds the state directory's lock (probed on a read-only
/// descriptor, released at once; a missing lock file means no).
fn lock_is_held(dir: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::File::open(dir.join("lock")) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; a lock we get is dropped with the file.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// What the pattern matches now, and why nothing when nothing: the directory and the errno
/// that hide the files (the same diagnosis `run` logs and `/healthz` reports).
fn check_files(pattern: &str, problems: &mut Vec<String>) {
    use crate::tail::access::{AUDIT_LOG_OFF, DirProblem, Unreadable, diagnose_dir, literal_dir};
    let paths = match glob::glob(pattern) {
        Ok(paths) => paths,
        Err(e) => {
            problems.push(format!("filepath {pattern:?}: bad pattern ({e})"));
            return;
        }
    };
    let (mut matched, mut unlisted) = (0, 0);
    for p in paths {
        match p {
            Ok(p) => {
                matched += 1;
                match std::fs::File::open(&p).and_then(|f| f.metadata()) {
                    Ok(m) => println!("  matches {} ({} bytes)", p.display(), m.len()),
                    Err(e) => {
                        let u = Unreadable::new(&p, &e);
                        problems.push(format!("{u}; {}", u.hint()));
                    }
                }
            }
            Err(e) => {
                unlisted += 1;
                let u = Unreadable::new(e.path(), e.error());
                problems.push(format!("filepath {pattern}: cannot list {u}; {}", u.hint()));
            }
        }
    }
    if matched > 0 || unlisted > 0 {
        return;
    }
    problems.push(match diagnose_dir(&literal_dir(Path::new(pattern))) {
        Some(DirProblem::Unreadable(u)) => {
            format!("filepath {pattern}: nothing can be read: {u}; {}", u.hint())
        }
        Some(DirProblem::Missing(p)) => format!(
            "filepath {pattern}: no file matches now: {} does not exist; {AUDIT_LOG_OFF}",
            p.display()
        ),
        None => format!("filepath {pattern}: no file matches now; {AUDIT_LOG_OFF}"),
    });
}

/// A proxy URL as it may be printed: `user:password@` replaced by `***@` (the output of
/// `check` is pasted into tickets).
fn without_credentials(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let sep = if scheme.is_empty() { "" } else { "://" };
            format!("{scheme}{sep}***@{}", &rest[at + 1..])
        }
        None => url.to_string(),
    }
}

/// TLS handshake and an authenticated POST of an empty batch.
fn check_intake(cfg: &Config, l: &crate::config::LogFile, problems: &mut Vec<String>) {
    let sender = match Sender::new(&cfg.intake(l)) {
        Ok(s) => s,
        Err(e) => {
            problems.push(format!("intake settings: {e}"));
            return;
        }
    };
    let empty = GzEncoder::new(Vec::new(), Compression::fast())
        .finish()
        .unwrap_or_default();
    match sender.post(&empty, None) {
        Answer::Accepted => println!("  intake: reachable, key accepted (empty batch probe)"),
        Answer::KeyRefused(code) => problems.push(format!(
            "{}: the intake refuses the key (HTTP {code}); copy the intake key from the \
             SEKOIA.IO intake page into {}",
            l.filepath, l.key_source
        )),
        Answer::Status(code) => println!(
            "  intake: reachable over TLS; the key is not verified (HTTP {code} to an empty probe)"
        ),
        Answer::TooLarge | Answer::Busy(_) => {
            println!("  intake: reachable over TLS; busy or refusing the probe, key not verified")
        }
        Answer::Failed(e) => problems.push(format!(
            "intake {}: unreachable ({e}); check the network, HTTPProxyURL, ca_file",
            cfg.intake_url
        )),
    }
    let _ = std::io::stdout().flush();
}

#[cfg(test)]
mod tests {
    use super::without_credentials;

    #[test]
    fn proxy_credentials_are_not_printed() {
        assert_eq!(
            without_credentials("http://bob:s3cret@proxy.local:3128"),
            "http://***@proxy.local:3128"
        );
        assert_eq!(
            without_credentials("http://proxy.local:3128/"),
            "http://proxy.local:3128/"
        );
        assert_eq!(without_credentials("bob:pw@p:1"), "***@p:1");
    }
}
