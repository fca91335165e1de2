//! The route table: which route and rule handle an HTTP request, by its authority,
//! path, method and headers. Built once from the merged route specs
//! ([`RouteTable::new`], or [`super::Merged::table`]) and then only read, so the node
//! swaps a whole new table in when the routes change and readers never wait.
//!
//! Choosing, for a request:
//! 1. The authority's host is taken without port, userinfo or trailing dot, in
//!    lowercase ([`normalize_host`]).
//! 2. Routes are tried by how specifically they name the host: those listing it
//!    exactly, then those with a matching `*.` wildcard, longest suffix first, then
//!    those listing `*`. A route that lists the host several ways counts at its most
//!    specific.
//! 3. Within one level, each route offers its first rule that matches the request
//!    (rules are checked in order). Of the offers, the one with the longer
//!    `path_prefix` wins, then the one with more header conditions, then the route
//!    whose name sorts first — so the choice is the same on every node.
//! 4. If no route at a level offers a rule, the next level is tried: a route for
//!    `shop.example.org` that handles only `/api` leaves other paths of that host to
//!    a `*.example.org` or `*` route. No offer at any level: no route (the node
//!    answers 404).

use std::borrow::Cow;
use std::collections::BTreeMap;

use super::{RouteSpec, Rule};

/// The route and rule chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteMatch<'a> {
    /// The route.
    pub route: &'a RouteSpec,
    /// Its rule that matched.
    pub rule: &'a Rule,
    /// The rule's index in [`RouteSpec::rules`], for logs and metrics.
    pub rule_index: usize,
}

/// Routes indexed by host, for [`RouteTable::route`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteTable {
    /// The live (not deleted) routes, sorted by name.
    routes: Vec<RouteSpec>,
    /// Exact host → indices into `routes`, ascending.
    exact: BTreeMap<String, Vec<usize>>,
    /// Wildcard suffix with its leading dot (`.example.org`) → indices.
    suffix: BTreeMap<String, Vec<usize>>,
    /// Indices of the routes listing `*`.
    any: Vec<usize>,
}

impl RouteTable {
    /// Builds the table from route specs, normally the winners of
    /// [`super::merge()`]. Tombstones are skipped. Specs are expected to be valid
    /// and to have distinct names; an invalid one cannot make lookups panic, only
    /// match oddly.
    pub fn new(specs: impl IntoIterator<Item = RouteSpec>) -> RouteTable {
        let mut routes: Vec<RouteSpec> = specs.into_iter().filter(|s| !s.deleted).collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        let mut table = RouteTable {
            routes: Vec::new(),
            exact: BTreeMap::new(),
            suffix: BTreeMap::new(),
            any: Vec::new(),
        };
        for (index, route) in routes.iter().enumerate() {
            for host in &route.hosts {
                let list = if host == "*" {
                    &mut table.any
                } else if let Some(domain) = host.strip_prefix('*') {
                    table.suffix.entry(domain.to_string()).or_default()
                } else {
                    table.exact.entry(host.clone()).or_default()
                };
                if list.last() != Some(&index) {
                    list.push(index);
                }
            }
        }
        table.routes = routes;
        table
    }

    /// The live routes, sorted by name.
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }

    /// The live route called `name`.
    pub fn get(&self, name: &str) -> Option<&RouteSpec> {
        self.routes
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .and_then(|i| self.routes.get(i))
    }

    /// How many live routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// Whether there are no live routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route and rule for a request (see the module doc for the order).
    ///
    /// `authority` is the request's `:authority` or `Host` (a port is ignored),
    /// `path` its path, with or without the query string, `method` its method, and
    /// `header` returns the value of the request header with the given lowercase
    /// name (for a repeated header, the node decides which value it returns).
    pub fn route<'h>(
        &self,
        authority: &str,
        path: &str,
        method: &str,
        header: impl Fn(&str) -> Option<&'h str>,
    ) -> Option<RouteMatch<'_>> {
        let host = normalize_host(authority);
        let host: &str = &host;
        if let Some(m) = self
            .exact
            .get(host)
            .and_then(|ids| self.best(ids, path, method, &header))
        {
            return Some(m);
        }
        // Every suffix of the host that starts at a dot, longest first; at least
        // one character must precede it (`*.example.org` does not match
        // `example.org`, nor `.example.org`).
        for (dot, _) in host.match_indices('.').filter(|(i, _)| *i > 0) {
            if let Some(m) = host
                .get(dot..)
                .and_then(|suffix| self.suffix.get(suffix))
                .and_then(|ids| self.best(ids, path, method, &header))
            {
                return Some(m);
            }
        }
        self.best(&self.any, path, method, &header)
    }

    /// The best offer of the routes `ids` (one host-specificity level).
    fn best<'h>(
        &self,
        ids: &[usize],
        path: &str,
        method: &str,
        header: &impl Fn(&str) -> Option<&'h str>,
    ) -> Option<RouteMatch<'_>> {
        let mut best: Option<(RouteMatch<'_>, (usize, usize))> = None;
        for route in ids.iter().filter_map(|&i| self.routes.get(i)) {
            let Some((rule_index, rule)) = route
                .rules
                .iter()
                .enumerate()
                .find(|(_, rule)| rule.r#match.matches(path, method, header))
            else {
                continue;
            };
            let rank = (rule.r#match.path_prefix.len(), rule.r#match.headers.len());
            // Routes come in name order, so on equal rank the first one stays.
            if best.as_ref().is_none_or(|(_, r)| rank > *r) {
                best = Some((
                    RouteMatch {
                        route,
                        rule,
                        rule_index,
                    },
                    rank,
                ));
            }
        }
        best.map(|(m, _)| m)
    }
}

/// The host of an authority as route hosts are written: without userinfo, port or
/// trailing dot, in lowercase. `Shop.Example.org:8443` gives `shop.example.org`;
/// `[::1]:80` gives `[::1]`.
pub fn normalize_host(authority: &str) -> Cow<'_, str> {
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host_port.starts_with('[') {
        match host_port.find(']') {
            Some(end) => host_port.get(..=end).unwrap_or(host_port),
            None => host_port,
        }
    } else {
        match host_port.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => host_port,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }
}
