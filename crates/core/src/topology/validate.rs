//! Checks across sections: references between names, locations that overlap, policies
//! that would fight over keys, and replication loops; and the databases' cross checks.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;

use super::policies::DraftPolicy;
use super::read::Ctx;
use super::sections::Draft;
use crate::StoreUrl;

pub(super) fn check(ctx: &mut Ctx<'_>, base_dir: &Path, draft: &Draft) {
    store_regions(ctx, draft);
    for p in &draft.policies {
        policy_references(ctx, base_dir, draft, p);
    }
    duplicate_policy_names(ctx, draft);
    shared_destinations(ctx, base_dir, draft);
    cycles(ctx, base_dir, draft);
    super::databases::check(ctx, &draft.regions, &draft.databases);
    super::failover::check(
        ctx,
        draft.server.listen,
        &draft.databases,
        &draft.failover_groups,
    );
    super::backups::check(ctx, &draft.stores, &draft.backups);
    super::relays::check(ctx, draft);
    super::concierges::check(ctx, draft);
    super::secrets::check(ctx, draft);
}

fn store_regions(ctx: &mut Ctx<'_>, draft: &Draft) {
    for (name, store) in &draft.stores {
        let Some(region) = &store.region else {
            continue;
        };
        let r = region.get_ref();
        if !draft.regions.contains_key(r) {
            ctx.error(
                Some(region.span()),
                &format!("store '{name}'"),
                format!("region '{r}' is not declared; add a [regions.{r}] table or fix the name"),
            );
        }
    }
}

/// A store's location for overlap checks: where it really is when the caller resolved
/// links, else as written.
fn url<'d>(draft: &'d Draft, store: &str) -> Option<&'d StoreUrl> {
    let s = draft.stores.get(store)?;
    s.real.as_ref().or(s.url.as_ref())
}

fn policy_references(ctx: &mut Ctx<'_>, base_dir: &Path, draft: &Draft, p: &DraftPolicy) {
    let what = p.what.as_str();
    let source = p.source.as_ref().map(|s| s.get_ref().as_str());
    if let Some(s) = &p.source {
        let s = s.get_ref();
        if !draft.stores.contains_key(s) {
            ctx.error(
                p.source.as_ref().map(|s| s.span()),
                what,
                format!(
                    "source '{s}' is not a store; declare it under [stores.{s}] or fix the name"
                ),
            );
        }
    }
    let mut seen: Vec<&str> = Vec::new();
    for dest in &p.destinations {
        let d = dest.get_ref().as_str();
        if !draft.stores.contains_key(d) {
            ctx.error(
                Some(dest.span()),
                what,
                format!("destination '{d}' is not a store; declare it under [stores.{d}] or fix the name"),
            );
            continue;
        }
        if seen.contains(&d) {
            ctx.error(
                Some(dest.span()),
                what,
                format!("destination '{d}' is listed twice; remove one"),
            );
            continue;
        }
        if source == Some(d) {
            ctx.error(
                Some(dest.span()),
                what,
                format!("destination '{d}' is also the source; a policy copies from one store to different ones"),
            );
        } else if let (Some(s), Some(su), Some(du)) =
            (source, source.and_then(|s| url(draft, s)), url(draft, d))
        {
            if du.overlaps(su, base_dir) {
                ctx.error(
                    Some(dest.span()),
                    what,
                    format!(
                        "destination '{d}' ({du}) overlaps the source '{s}' ({su}): the policy would copy into its own source; give them locations that do not contain each other"
                    ),
                );
            }
        }
        for other in &seen {
            if let (Some(a), Some(b)) = (url(draft, other), url(draft, d)) {
                if a.overlaps(b, base_dir) {
                    ctx.error(
                        Some(dest.span()),
                        what,
                        format!(
                            "destinations '{other}' ({a}) and '{d}' ({b}) overlap: one copy would land inside the other; keep one of them or give them separate locations"
                        ),
                    );
                }
            }
        }
        seen.push(d);
    }
}

fn duplicate_policy_names(ctx: &mut Ctx<'_>, draft: &Draft) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for p in &draft.policies {
        let Some(name) = &p.name else {
            continue;
        };
        match first.get(name.get_ref().as_str()) {
            Some(line) => ctx.error(
                Some(name.span()),
                &p.what,
                format!(
                    "the name '{}' is already used by the policy at line {line}; policy names must be unique",
                    name.get_ref()
                ),
            ),
            None => {
                let line = ctx.line_of(&p.span);
                first.insert(name.get_ref(), line);
            }
        }
    }
}

/// Two policies writing into the same keys would overwrite each other (and with
/// `deletes = "propagate"`, delete each other's objects). They are accepted only when
/// both narrow their keys with include patterns whose fixed prefixes cannot meet.
fn shared_destinations(ctx: &mut Ctx<'_>, base_dir: &Path, draft: &Draft) {
    for (j, q) in draft.policies.iter().enumerate() {
        for p in &draft.policies[..j] {
            if let Some((d, e)) = conflict(base_dir, draft, p, q) {
                let place = if d == e {
                    format!("destination '{d}'")
                } else {
                    format!("destinations '{d}' and '{e}', which overlap")
                };
                let p_name = p.name.as_ref().map_or("?", |n| n.get_ref().as_str());
                let q_name = q.name.as_ref().map_or("?", |n| n.get_ref().as_str());
                let p_line = ctx.line_of(&p.span);
                ctx.error(
                    Some(q.span.clone()),
                    &q.what,
                    format!(
                        "policies '{p_name}' (line {p_line}) and '{q_name}' both write into {place}, and their keys may overlap so one could overwrite or delete the other's objects; give both policies include patterns with disjoint prefixes (e.g. [\"images/**\"] and [\"videos/**\"]) or use separate destinations"
                    ),
                );
            }
        }
    }
}

/// The first pair of destinations where `p` and `q` may write the same key.
fn conflict<'d>(
    base_dir: &Path,
    draft: &'d Draft,
    p: &'d DraftPolicy,
    q: &'d DraftPolicy,
) -> Option<(&'d str, &'d str)> {
    for d in &p.destinations {
        for e in &q.destinations {
            let (d, e) = (d.get_ref().as_str(), e.get_ref().as_str());
            let (Some(du), Some(eu)) = (url(draft, d), url(draft, e)) else {
                continue;
            };
            if (d == e || du.overlaps(eu, base_dir)) && !disjoint(p, du, q, eu) {
                return Some((d, e));
            }
        }
    }
    None
}

/// Conservative: true only when every key `p` writes under `du` starts with a text that
/// no key `q` writes under `eu` can start with, and the other way round.
fn disjoint(p: &DraftPolicy, du: &StoreUrl, q: &DraftPolicy, eu: &StoreUrl) -> bool {
    if p.include.is_empty() || q.include.is_empty() {
        return false;
    }
    let (db, eb) = (key_base(du), key_base(eu));
    p.include.iter().all(|a| {
        q.include.iter().all(|b| {
            let (a, b) = (join(&db, literal_prefix(a)), join(&eb, literal_prefix(b)));
            !(a.starts_with(&b) || b.starts_with(&a))
        })
    })
}

/// Where keys land in the destination's namespace: the folder for a local store (paths
/// are already resolved), the key prefix for an object store.
fn key_base(url: &StoreUrl) -> String {
    match url {
        StoreUrl::Local { path } => path.to_string_lossy().trim_end_matches('/').to_string(),
        other => other.prefix().to_string(),
    }
}

fn join(base: &str, rest: &str) -> String {
    if base.is_empty() {
        rest.to_string()
    } else {
        format!("{base}/{rest}")
    }
}

/// The text of a glob before its first metacharacter: every key it matches starts with
/// it. A leading `/` is ignored, as the filter ignores it.
fn literal_prefix(pattern: &str) -> &str {
    let p = pattern.trim_start_matches('/');
    let end = p.find(['*', '?', '[', '{', '\\']).unwrap_or(p.len());
    &p[..end]
}

/// One replication edge: `policy` copies from store `from` to store `to`.
struct Edge<'d> {
    from: usize,
    to: usize,
    from_name: &'d str,
    to_name: &'d str,
    policy: &'d DraftPolicy,
}

/// Finds loops in the graph source → destination, where stores whose locations overlap
/// count as one node. Reports one loop per strongly connected group, so the output
/// stays short however tangled the file is.
fn cycles(ctx: &mut Ctx<'_>, base_dir: &Path, draft: &Draft) {
    let stores: Vec<(&str, &StoreUrl)> = draft
        .stores
        .iter()
        .filter_map(|(n, s)| Some((n.as_str(), s.real.as_ref().or(s.url.as_ref())?)))
        .collect();
    let index: HashMap<&str, usize> = stores
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (*n, i))
        .collect();
    // Union-find over overlapping locations.
    let mut parent: Vec<usize> = (0..stores.len()).collect();
    fn root(parent: &mut [usize], mut i: usize) -> usize {
        while parent[i] != i {
            parent[i] = parent[parent[i]];
            i = parent[i];
        }
        i
    }
    for i in 0..stores.len() {
        for j in i + 1..stores.len() {
            if stores[i].1.overlaps(stores[j].1, base_dir) {
                let (a, b) = (root(&mut parent, i), root(&mut parent, j));
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut edges = Vec::new();
    for p in &draft.policies {
        let Some(src) = &p.source else { continue };
        let Some(&si) = index.get(src.get_ref().as_str()) else {
            continue;
        };
        for d in &p.destinations {
            let Some(&di) = index.get(d.get_ref().as_str()) else {
                continue;
            };
            let (from, to) = (root(&mut parent, si), root(&mut parent, di));
            // A policy into its own location is reported as an overlap already.
            if from != to {
                edges.push(Edge {
                    from,
                    to,
                    from_name: stores[si].0,
                    to_name: stores[di].0,
                    policy: p,
                });
            }
        }
    }
    let nodes: BTreeSet<usize> = edges.iter().flat_map(|e| [e.from, e.to]).collect();
    let reach: HashMap<usize, BTreeSet<usize>> =
        nodes.iter().map(|&n| (n, reachable(&edges, n))).collect();
    let mut grouped: BTreeSet<usize> = BTreeSet::new();
    // Start from sources in file order, so a loop reads from the first policy in it.
    for u in edges.iter().map(|e| e.from) {
        if grouped.contains(&u) {
            continue;
        }
        let group: BTreeSet<usize> = nodes
            .iter()
            .copied()
            .filter(|v| *v == u || (reach[&u].contains(v) && reach[v].contains(&u)))
            .collect();
        grouped.extend(&group);
        if group.len() < 2 {
            continue;
        }
        if let Some(path) = loop_from(&edges, &group, u) {
            report_cycle(ctx, &path);
        }
    }
}

fn reachable(edges: &[Edge<'_>], start: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![start];
    while let Some(n) = todo.pop() {
        for e in edges.iter().filter(|e| e.from == n) {
            if seen.insert(e.to) {
                todo.push(e.to);
            }
        }
    }
    seen
}

/// A shortest loop from `start` back to itself inside `group` (breadth first).
fn loop_from<'e, 'd>(
    edges: &'e [Edge<'d>],
    group: &BTreeSet<usize>,
    start: usize,
) -> Option<Vec<&'e Edge<'d>>> {
    let mut came_by: HashMap<usize, usize> = HashMap::new();
    let mut queue = VecDeque::from([start]);
    while let Some(n) = queue.pop_front() {
        for (i, e) in edges.iter().enumerate() {
            if e.from != n || !group.contains(&e.to) {
                continue;
            }
            if e.to == start {
                let mut path = vec![e];
                let mut at = n;
                while at != start {
                    let prev = &edges[*came_by.get(&at)?];
                    path.push(prev);
                    at = prev.from;
                }
                path.reverse();
                return Some(path);
            }
            if e.to != start && !came_by.contains_key(&e.to) {
                came_by.insert(e.to, i);
                queue.push_back(e.to);
            }
        }
    }
    None
}

fn report_cycle(ctx: &mut Ctx<'_>, path: &[&Edge<'_>]) {
    let Some(first) = path.first() else { return };
    let mut text = first.from_name.to_string();
    let mut policies: Vec<String> = Vec::new();
    for (k, e) in path.iter().enumerate() {
        text.push_str(" → ");
        text.push_str(e.to_name);
        let next = path.get(k + 1).map_or(first.from_name, |n| n.from_name);
        if next != e.to_name {
            text.push_str(&format!(" (same location as '{next}')"));
        }
        let name = e.policy.name.as_ref().map_or("?", |n| n.get_ref().as_str());
        let quoted = format!("'{name}'");
        if !policies.contains(&quoted) {
            policies.push(quoted);
        }
    }
    ctx.error(
        Some(first.policy.span.clone()),
        &first.policy.what,
        format!(
            "replication cycle {text} (policies {}): objects would be copied around the loop forever; remove one of these policies or change its destinations",
            policies.join(", ")
        ),
    );
}
