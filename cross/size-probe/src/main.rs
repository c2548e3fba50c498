//! `size-probe extract FILE...` runs the extractor; `size-probe post URL KEY FILE` sends a
//! gzip file to an intake. Only there so both halves are linked and measured together.
use kube_audit_shipper::cmd::extract::{self, Options};
use kube_audit_shipper::extract::Format;
use kube_audit_shipper::intake::{Answer, IntakeConfig, Sender};
use kube_audit_shipper::lines::DEFAULT_MAX_LINE;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("extract") => {
            let opts = Options {
                format: Format::Audit,
                strict: false,
                max_line: DEFAULT_MAX_LINE,
                files: args[1..].to_vec(),
            };
            match extract::run(&opts) {
                Ok(s) => {
                    eprintln!("{} events", s.events);
                    ExitCode::SUCCESS
                }
                Err(_) => ExitCode::FAILURE,
            }
        }
        Some("post") if args.len() == 4 => {
            let cfg = IntakeConfig {
                url: args[1].clone(),
                key: args[2].clone(),
                ca_file: None,
                client_cert: None,
                proxy: None,
                timeout: Duration::from_secs(5),
                level: 3,
            };
            let body = std::fs::read(&args[3]).unwrap_or_default();
            match Sender::new(&cfg).map(|s| s.post(&body, None)) {
                Ok(Answer::Accepted) => ExitCode::SUCCESS,
                Ok(Answer::Failed(e)) => {
                    eprintln!("failed: {e}");
                    ExitCode::FAILURE
                }
                Ok(_) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => {
            eprintln!("usage: size-probe extract FILE... | post URL KEY FILE");
            ExitCode::from(2)
        }
    }
}
