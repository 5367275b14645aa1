//! The `vipvisor` binary: clap → the application API → render, and the wiring of the
//! daemons (speaker, controller). Errors go to stderr with exit code 1 (usage errors: 2,
//! from clap; a speaker's address conflict: 3); nothing reaches stdout on error.
//!
//! Owns: flags, output formats, process concerns (runtime, signals, exit codes). Must not:
//! hold rules (api and the crates below do).

mod args;
mod commands;
mod daemons;
mod http;
mod hypervisor;
mod render;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;
use vipvisor_api::App;
use vipvisor_l2::SpeakerError;

use args::{Cli, Command};

/// Exit code of a speaker that found an address conflict.
const EXIT_CONFLICT: u8 = 3;

/// The default store URL: `$XDG_DATA_HOME/vipvisor/vipvisor.db` (or `~/.local/share/…`).
fn default_store_url() -> anyhow::Result<String> {
    // A relative XDG_DATA_HOME is invalid and ignored, as the XDG base directory spec says.
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| std::path::Path::new(v).is_absolute()) {
        Some(d) => std::path::PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME").filter(|v| !v.is_empty()).ok_or_else(|| {
                anyhow::anyhow!("neither XDG_DATA_HOME nor HOME is set; expected one, or --store URL")
            })?;
            std::path::PathBuf::from(home).join(".local/share")
        }
    };
    Ok(format!("sqlite://{}", base.join("vipvisor/vipvisor.db").display()))
}

/// Runs a parsed command; returns the text to print on stdout.
async fn run(cli: Cli) -> anyhow::Result<String> {
    if let Command::Speaker(a) = &cli.command {
        let record = match (a.record, &cli.store) {
            (false, _) => None,
            (true, Some(u)) => Some(u.clone()),
            (true, None) => Some(default_store_url()?),
        };
        daemons::run_speaker(a, record).await?;
        return Ok(String::new());
    }
    if let Command::Controller(a) = &cli.command {
        let url = cli.store.clone().unwrap_or_else(|| "sqlite:///var/lib/vipvisor/vipvisor.db".to_string());
        daemons::run_controller(a, url, cli.quarantine).await?;
        return Ok(String::new());
    }
    let url = match &cli.store {
        Some(u) => u.clone(),
        None => default_store_url()?,
    };
    if let Command::Hypervisor(h) = &cli.command {
        let store = async {
            let s = vipvisor_store::Store::open(&url).await.map_err(|e| anyhow::anyhow!(e.to_string()))?;
            Ok(s.with_actor(cli.actor.clone().unwrap_or_else(|| "cli:hypervisor".into())))
        };
        return hypervisor::run(h, cli.output, store).await;
    }
    if let Command::Serve(a) = &cli.command {
        // The whole provider file is checked before anything else is done.
        let hypervisor = match &a.providers {
            Some(p) => Some(std::sync::Arc::new(hypervisor::load(p)?)),
            None => None,
        };
        let app =
            App::open(&url, "serve", cli.quarantine).await.map_err(|e| anyhow::anyhow!(render::error_text(&e)))?;
        let metrics = vipvisor_server::metrics::Metrics::new();
        let m = metrics.clone();
        let extra = http::router(move || m.encode(), vipvisor_health::Health::new(), None, None);
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => Some(vipvisor_server::TlsFiles { cert: cert.clone(), key: key.clone() }),
            _ => None,
        };
        let sources =
            vipvisor_server::Sources { hypervisor, metrics: Some(metrics), print_login: true, ..Default::default() };
        let r = vipvisor_server::serve(a.listen, app.clone(), extra, tls, sources, daemons::shutdown_signal()).await;
        app.close().await;
        r.map_err(|e| anyhow::anyhow!(render::error_text(&e)))?;
        return Ok(String::new());
    }
    let actor = cli
        .actor
        .clone()
        .unwrap_or_else(|| format!("cli:{}", std::env::var("USER").unwrap_or_else(|_| "unknown".into())));
    let app = if cli.command.reads_only() {
        App::open_read_only(&url, cli.quarantine).await
    } else {
        App::open(&url, &actor, cli.quarantine).await
    };
    let app = app.map_err(|e| anyhow::anyhow!(render::error_text(&e)))?;
    let out = commands::execute(&app, &cli).await;
    app.close().await;
    out.map_err(|e| anyhow::anyhow!(render::error_text(&e)))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Long-running modes log what they do; one-shot commands only warnings.
    let long = matches!(cli.command, Command::Speaker(_) | Command::Controller(_) | Command::Serve(_));
    let default = if long { "info" } else { "warn" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("VIPVISOR_LOG").unwrap_or_else(|_| default.into()))
        .init();
    // The daemons get two workers: ARP replies and gossip timers do not wait behind
    // reflector decoding or store writes. A one-shot command needs one thread.
    let rt = if long {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(out) => {
            let mut stdout = std::io::stdout().lock();
            if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.downcast_ref::<hypervisor::Exit>().is_some() => {
            let Some(x) = e.downcast_ref::<hypervisor::Exit>() else { return ExitCode::FAILURE };
            let _ = std::io::stdout().lock().write_all(x.out.as_bytes());
            ExitCode::from(x.code)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            let conflict = e.downcast_ref::<SpeakerError>().is_some_and(|s| matches!(s, SpeakerError::Conflict { .. }))
                || e.downcast_ref::<vipvisor_kube::speaker::KubeSpeakerError>().is_some_and(|s| {
                    matches!(s, vipvisor_kube::speaker::KubeSpeakerError::Speaker(SpeakerError::Conflict { .. }))
                });
            if conflict {
                ExitCode::from(EXIT_CONFLICT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
