//! The IPAM commands: flags → the application API → rendered text. No rule lives here;
//! every decision and every refusal comes from [`vipvisor_api`].

use serde_json::json;
use vipvisor_api::apply::{read_pools_file, ApplyOptions};
use vipvisor_api::events::EventQuery;
use vipvisor_api::{ApiError, App, Change, FamilyStats};
use vipvisor_model::{AllocRequest, FamilyRequest, Pool, PoolOptions, Reservation};

use crate::args::{AllocCmd, Cli, Command, FamilyArg, PoolCmd, ReserveCmd, RoleArg, SinceArg, TokenCmd};
use crate::render::{addrs_text, blocks_text, labels_text, released_text, render, row, table};
use vipvisor_api::tokens::Role;

/// Runs an IPAM command; returns the text to print on stdout.
pub async fn execute(app: &App, cli: &Cli) -> Result<String, ApiError> {
    let fmt = cli.output;
    match &cli.command {
        Command::Pool(PoolCmd::Add(a)) => {
            let options = PoolOptions {
                auto_assign: !a.no_auto_assign,
                avoid_buggy_ips: a.avoid_buggy_ips,
                namespaces: a.namespaces.iter().cloned().collect(),
                namespace_selector: a.namespace_selector.clone().unwrap_or_default(),
                service_selector: a.service_selector.clone().unwrap_or_default(),
                priority: a.priority,
                mac: a.mac,
            };
            let pool = Pool::new(a.name.clone(), a.addresses.clone(), options)?;
            let report = app.create_pool(pool.clone()).await?;
            render(fmt, &report, || format!("pool {} created: {}\n", pool.name, blocks_text(&pool)))
        }
        Command::Pool(PoolCmd::List) => {
            let rows = app.pools().await?;
            render(fmt, &rows, || {
                let mut t = vec![row(["NAME", "ADDRESSES", "AUTO", "PRIORITY", "SIZE", "USED", "FREE"])];
                for v in &rows {
                    let sum = |f: fn(&FamilyStats) -> u128| v.families.iter().map(f).fold(0u128, u128::saturating_add);
                    t.push(vec![
                        v.pool.name.to_string(),
                        blocks_text(&v.pool),
                        v.pool.options.auto_assign.to_string(),
                        v.pool.options.priority.map_or("-".into(), |p| p.to_string()),
                        sum(|s| s.size).to_string(),
                        sum(|s| s.used).to_string(),
                        sum(|s| s.free).to_string(),
                    ]);
                }
                table(&t)
            })
        }
        Command::Pool(PoolCmd::Show { name }) => {
            let view = app.pool(name).await?;
            render(fmt, &view, || {
                let p = &view.pool;
                let o = &p.options;
                let mut s = format!(
                    "name:               {}\naddresses:          {}\nauto_assign:        {}\navoid_buggy_ips:    {}\nnamespaces:         {}\nnamespace_selector: {}\nservice_selector:   {}\npriority:           {}\nmac:                {}\n\n",
                    p.name,
                    blocks_text(p),
                    o.auto_assign,
                    o.avoid_buggy_ips,
                    if o.namespaces.is_empty() { "(all)".into() } else { o.namespaces.iter().cloned().collect::<Vec<_>>().join(",") },
                    labels_text(&o.namespace_selector),
                    labels_text(&o.service_selector),
                    o.priority.map_or("-".into(), |x| x.to_string()),
                    o.mac.as_str(),
                );
                let mut t = vec![row(["FAMILY", "SIZE", "RESERVED", "USED", "QUARANTINED", "FREE"])];
                for f in &view.families {
                    t.push(vec![
                        f.family.to_string(),
                        f.size.to_string(),
                        f.reserved.to_string(),
                        f.used.to_string(),
                        f.quarantined.to_string(),
                        f.free.to_string(),
                    ]);
                }
                s.push_str(&table(&t));
                s
            })
        }
        Command::Pool(PoolCmd::Rm { name, force }) => {
            let report = app.delete_pool(name, *force).await?;
            render(fmt, &report, || {
                let mut s = format!("pool {name} removed\n");
                s.push_str(&released_text(&report));
                s
            })
        }
        Command::Reserve(ReserveCmd::Add { block, note, force }) => {
            let report = app.add_reservation(Reservation { block: *block, note: note.clone() }, *force).await?;
            render(fmt, &report, || format!("reserved {block}\n{}", released_text(&report)))
        }
        Command::Reserve(ReserveCmd::List) => {
            let rows = app.reservations().await?;
            render(fmt, &rows, || {
                let mut t = vec![row(["BLOCK", "NOTE"])];
                t.extend(rows.iter().map(|r| vec![r.block.to_string(), r.note.clone()]));
                table(&t)
            })
        }
        Command::Reserve(ReserveCmd::Rm { block }) => {
            let report = app.remove_reservation(block).await?;
            render(fmt, &report, || format!("reservation {block} removed\n"))
        }
        Command::Alloc(AllocCmd::Request(a)) => {
            let req = AllocRequest {
                service: a.service.clone(),
                uid: a.uid.clone(),
                addresses: a.ips.clone(),
                pool: a.pool.clone(),
                family: a.family.map(|f| match f {
                    FamilyArg::Ipv4 => FamilyRequest::Ipv4,
                    FamilyArg::Ipv6 => FamilyRequest::Ipv6,
                    FamilyArg::Dual => FamilyRequest::Dual,
                    FamilyArg::PreferDual => FamilyRequest::PreferDual,
                }),
                sharing_key: a.sharing_key.clone(),
                ports: a.ports.iter().copied().collect(),
                namespace_labels: a.namespace_labels.clone().unwrap_or_default(),
                service_labels: a.labels.clone().unwrap_or_default(),
            };
            let o = app.allocate(&req).await?;
            let view = json!({"service": o.service, "addresses": o.addresses, "pool": o.pool});
            render(fmt, &view, || {
                let change = match o.change {
                    Change::Created => "allocated",
                    Change::Updated => "updated",
                    Change::Unchanged => "unchanged",
                };
                format!("{} {} from pool {} ({change})\n", o.service, addrs_text(&o.addresses), o.pool)
            })
        }
        Command::Alloc(AllocCmd::Release { service, uid }) => {
            let r = app.release(service, uid.as_ref()).await?;
            render(fmt, &r, || {
                if r.released.is_empty() {
                    format!("{service} held no addresses; nothing to release\n")
                } else {
                    format!(
                        "{service} released {}{}\n",
                        addrs_text(&r.released),
                        r.quarantined_until.as_ref().map(|u| format!(" (quarantined until {u})")).unwrap_or_default()
                    )
                }
            })
        }
        Command::Alloc(AllocCmd::List) => {
            let rows = app.allocations().await?;
            render(fmt, &rows, || {
                let mut t = vec![row(["SERVICE", "ADDRESSES", "POOL", "SHARING-KEY", "PORTS", "UID"])];
                for a in &rows {
                    t.push(vec![
                        a.service.to_string(),
                        addrs_text(&a.addresses),
                        a.pool.to_string(),
                        a.sharing_key.as_ref().map_or("-".into(), ToString::to_string),
                        if a.ports.is_empty() {
                            "-".into()
                        } else {
                            a.ports.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
                        },
                        a.uid.as_ref().map_or("-".into(), ToString::to_string),
                    ]);
                }
                table(&t)
            })
        }
        Command::Apply { file, prune, force, allow_empty } => {
            let config = read_pools_file(file)?;
            let report =
                app.apply(config, ApplyOptions { prune: *prune, force: *force, allow_empty: *allow_empty }).await?;
            render(fmt, &report, || {
                let mut s = String::new();
                for c in report.pools.iter() {
                    s.push_str(&format!("pool {} {}\n", c.name, c.action));
                }
                for c in report.reservations.iter() {
                    s.push_str(&format!("reservation {} {}\n", c.name, c.action));
                }
                for a in &report.rehomed {
                    s.push_str(&format!("{} keeps {} in pool {}\n", a.service, addrs_text(&a.addresses), a.pool));
                }
                s.push_str(&released_text(&report));
                if !report.changed {
                    s.push_str("no changes\n");
                }
                s
            })
        }
        Command::Events { since, limit } => {
            let since = since.map(|s| match s {
                SinceArg::At(t) => t,
                SinceArg::Ago(d) => app.ago(d),
            });
            let events = app.events(EventQuery { since, limit: *limit }).await?;
            render(fmt, &events, || {
                let mut t = vec![row(["ID", "TIME", "ACTOR", "KIND", "SUBJECT", "DETAIL"])];
                for e in &events {
                    t.push(vec![
                        e.id.to_string(),
                        e.at.clone(),
                        e.actor.clone(),
                        e.kind.clone(),
                        e.subject.clone(),
                        e.detail.to_string(),
                    ]);
                }
                table(&t)
            })
        }
        Command::Token(TokenCmd::Create { name, role }) => {
            let role = match role {
                RoleArg::Viewer => Role::Viewer,
                RoleArg::Admin => Role::Admin,
            };
            let t = app.create_token(name, role).await?;
            render(fmt, &t, || {
                format!("created {} token {:?}; it is shown only now:\n{}\n", t.role.as_str(), t.name, t.token)
            })
        }
        Command::Token(TokenCmd::List) => {
            let tokens = app.tokens().await?;
            render(fmt, &tokens, || {
                let mut t = vec![row(["NAME", "ROLE", "CREATED"])];
                for k in &tokens {
                    t.push(vec![k.name.clone(), k.role.as_str().into(), k.created.clone()]);
                }
                table(&t)
            })
        }
        Command::Token(TokenCmd::Revoke { name }) => {
            app.revoke_token(name).await?;
            render(fmt, &serde_json::json!({"revoked": name}), || format!("revoked token {name:?}\n"))
        }
        Command::Speaker(_) | Command::Controller(_) | Command::Hypervisor(_) | Command::Serve(_) => {
            Err(ApiError::new(
                vipvisor_api::ErrorCode::Internal,
                "long-running modes and hypervisor commands are started by main",
            ))
        }
    }
}
