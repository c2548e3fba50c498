//! Filters: the Sekoia agent's `OptimizationRules`, applied to each extracted event before
//! it is batched (DESIGN.md §8).
//!
//! A rule is `{action: 1, filters: [{field, operator, value}, ...]}`: action 1 means
//! *ignore*, and an event is ignored when **all** of a rule's filters match it. Fields are the
//! ECS names the intake produces (DESIGN.md §4's table), read straight from the parsed event
//! (no ECS document is built). Names and operators are checked when the configuration is
//! loaded, so a typo is a configuration error, not a rule that silently never matches.
//!
//! Matching, per operator:
//! - `==`, `contains`, `>`, `>=`, `<`, `<=` need the field to be present (ECS leaves out
//!   empty values, so an empty string is absent); on an array field (`user.roles`) one
//!   element matching is enough.
//! - `!=` and `not contains` are exactly the negation of `==` and `contains` (so an absent
//!   field is `!=` anything).
//! - Comparisons are numeric when both sides are numbers, else by text (RFC 3339 times in
//!   `event.start` compare correctly as text).
//! - `exists` / `not exists` take no value.

use crate::extract::Event;
use std::cmp::Ordering;

/// The ECS fields a filter can test, with the audit paths they come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EcsField {
    Action,
    Code,
    Start,
    Outcome,
    RbacReason,
    UrlPath,
    UserAgent,
    StatusCode,
    SourceIp,
    UserName,
    UserId,
    UserRoles,
    ObjectName,
    Resource,
    Namespace,
    Subresource,
    ApiGroup,
    HostNetwork,
    RoleName,
}

/// ECS names accepted in `field:`, and what they read.
pub const FIELDS: &[(&str, EcsField)] = &[
    ("event.action", EcsField::Action),
    ("event.code", EcsField::Code),
    ("event.start", EcsField::Start),
    ("event.outcome", EcsField::Outcome),
    ("action.outcome", EcsField::Outcome),
    ("kubernetes.rbacreason", EcsField::RbacReason),
    ("url.path", EcsField::UrlPath),
    ("user_agent.original", EcsField::UserAgent),
    ("http.response.status_code", EcsField::StatusCode),
    ("source.ip", EcsField::SourceIp),
    ("source.address", EcsField::SourceIp),
    ("related.ip", EcsField::SourceIp),
    ("user.name", EcsField::UserName),
    ("related.user", EcsField::UserName),
    ("user.id", EcsField::UserId),
    ("user.roles", EcsField::UserRoles),
    ("kubernetes.object.name", EcsField::ObjectName),
    ("kubernetes.resource", EcsField::Resource),
    ("kubernetes.namespace", EcsField::Namespace),
    ("kubernetes.subresource", EcsField::Subresource),
    ("kubernetes.api.group", EcsField::ApiGroup),
    ("kubernetes.spec.host_network", EcsField::HostNetwork),
    ("kubernetes.role.name", EcsField::RoleName),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    Eq,
    Ne,
    Contains,
    NotContains,
    Gt,
    Ge,
    Lt,
    Le,
    Exists,
    NotExists,
}

pub const OPERATORS: &[(&str, Operator)] = &[
    ("==", Operator::Eq),
    ("!=", Operator::Ne),
    ("contains", Operator::Contains),
    ("not contains", Operator::NotContains),
    (">", Operator::Gt),
    (">=", Operator::Ge),
    ("<", Operator::Lt),
    ("<=", Operator::Le),
    ("exists", Operator::Exists),
    ("not exists", Operator::NotExists),
];

impl Operator {
    pub fn parse(s: &str) -> Option<Operator> {
        OPERATORS.iter().find(|(n, _)| *n == s).map(|(_, op)| *op)
    }

    pub fn needs_value(self) -> bool {
        !matches!(self, Operator::Exists | Operator::NotExists)
    }

    fn is_ordering(self) -> bool {
        matches!(
            self,
            Operator::Gt | Operator::Ge | Operator::Lt | Operator::Le
        )
    }
}

impl EcsField {
    pub fn parse(s: &str) -> Option<EcsField> {
        FIELDS.iter().find(|(n, _)| *n == s).map(|(_, f)| *f)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Filter {
    pub field: EcsField,
    pub op: Operator,
    /// The value as text (numbers and booleans in their YAML spelling).
    pub value: String,
    /// The value as a number, when it is one.
    pub number: Option<f64>,
}

impl Filter {
    pub fn new(field: EcsField, op: Operator, value: String) -> Filter {
        let number = value.trim().parse::<f64>().ok().filter(|n| n.is_finite());
        Filter {
            field,
            op,
            value,
            number,
        }
    }

    pub fn matches(&self, e: &Event<'_>) -> bool {
        match self.op {
            Operator::Exists => any_value(e, self.field, |_| true),
            Operator::NotExists => !any_value(e, self.field, |_| true),
            Operator::Eq => any_value(e, self.field, |v| v.text() == self.value.as_str()),
            Operator::Ne => !any_value(e, self.field, |v| v.text() == self.value.as_str()),
            Operator::Contains => any_value(e, self.field, |v| v.text().contains(&*self.value)),
            Operator::NotContains => !any_value(e, self.field, |v| v.text().contains(&*self.value)),
            op => {
                debug_assert!(op.is_ordering());
                any_value(e, self.field, |v| {
                    let ord = match (v.number(), self.number) {
                        (Some(a), Some(b)) => a.partial_cmp(&b),
                        _ => Some((*v.text()).cmp(self.value.as_str())),
                    };
                    match ord {
                        Some(Ordering::Greater) => matches!(op, Operator::Gt | Operator::Ge),
                        Some(Ordering::Equal) => matches!(op, Operator::Ge | Operator::Le),
                        Some(Ordering::Less) => matches!(op, Operator::Lt | Operator::Le),
                        None => false,
                    }
                })
            }
        }
    }
}

/// A rule: ignore the event when every filter matches.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Shown in logs and metrics: the rule's `name:` or its position in the config.
    pub name: String,
    pub filters: Vec<Filter>,
}

impl Rule {
    pub fn matches(&self, e: &Event<'_>) -> bool {
        !self.filters.is_empty() && self.filters.iter().all(|f| f.matches(e))
    }
}

/// The first rule that ignores the event, by index.
pub fn ignored_by(rules: &[Rule], e: &Event<'_>) -> Option<usize> {
    rules.iter().position(|r| r.matches(e))
}

/// One value of a field, as the intake would show it.
enum Value<'a> {
    Text(&'a str),
    Int(i64),
    Bool(bool),
}

impl Value<'_> {
    fn text(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Value::Text(s) => std::borrow::Cow::Borrowed(s),
            Value::Int(n) => std::borrow::Cow::Owned(n.to_string()),
            Value::Bool(b) => std::borrow::Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Value::Int(n) => Some(*n as f64),
            Value::Text(s) => s.parse::<f64>().ok().filter(|n| n.is_finite()),
            Value::Bool(_) => None,
        }
    }
}

/// Whether some value of `field` in the event satisfies `test` (false when absent).
fn any_value(e: &Event<'_>, field: EcsField, mut test: impl FnMut(&Value<'_>) -> bool) -> bool {
    let f = e.fields();
    let text = |i: Option<u32>| e.text(i).filter(|s| !s.is_empty());
    let one = match field {
        EcsField::Action => text(f.verb),
        EcsField::Code => text(f.audit_id),
        EcsField::Start => text(f.request_received),
        EcsField::Outcome => text(f.decision),
        EcsField::RbacReason => text(f.reason),
        EcsField::UrlPath => text(f.request_uri),
        EcsField::UserAgent => text(f.user_agent),
        EcsField::SourceIp => e.source_ip(),
        EcsField::UserName => text(f.impersonated_name).or_else(|| text(f.user_name)),
        EcsField::UserId => text(f.user_uid),
        EcsField::ObjectName => text(f.object_name).or_else(|| text(f.response_name)),
        EcsField::Resource => text(f.object_resource),
        EcsField::Namespace => text(f.object_namespace),
        EcsField::Subresource => text(f.object_subresource),
        EcsField::ApiGroup => text(f.object_api_group),
        EcsField::RoleName => text(f.role_ref_name),
        EcsField::StatusCode => {
            return e.int(f.status_code).is_some_and(|n| test(&Value::Int(n)));
        }
        EcsField::HostNetwork => {
            return e
                .boolean(f.spec_host_network)
                .is_some_and(|b| test(&Value::Bool(b)));
        }
        EcsField::UserRoles => {
            let groups = if e.strings(f.impersonated_groups).next().is_some() {
                f.impersonated_groups
            } else {
                f.user_groups
            };
            return e
                .strings(groups)
                .filter(|s| !s.is_empty())
                .any(|s| test(&Value::Text(s)));
        }
    };
    one.is_some_and(|s| test(&Value::Text(s)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::Extractor;

    const EVENT: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/kube-system/configmaps/x","verb":"get","user":{"username":"system:kube-proxy","uid":"u-1","groups":["system:nodes","system:authenticated"]},"sourceIPs":["10.0.0.7"],"userAgent":"kube-proxy/v1.30","objectRef":{"resource":"configmaps","namespace":"kube-system","name":"x"},"responseStatus":{"code":200},"requestReceivedTimestamp":"2026-11-24T14:35:36.770000Z","annotations":{"authorization.k8s.io/decision":"allow","authorization.k8s.io/reason":""}}"#;

    fn check(filter: Filter) -> bool {
        let mut x = Extractor::new();
        let mut buf = EVENT.as_bytes().to_vec();
        let len = buf.len();
        let e = x.parse(&mut buf, len).unwrap();
        filter.matches(&e)
    }

    fn f(field: &str, op: &str, value: &str) -> Filter {
        Filter::new(
            EcsField::parse(field).unwrap(),
            Operator::parse(op).unwrap(),
            value.into(),
        )
    }

    #[test]
    fn text_operators() {
        assert!(check(f("user.name", "==", "system:kube-proxy")));
        assert!(!check(f("user.name", "!=", "system:kube-proxy")));
        assert!(check(f("user.name", "!=", "admin")));
        assert!(check(f("user_agent.original", "contains", "kube-proxy/")));
        assert!(check(f("user_agent.original", "not contains", "kubectl")));
        assert!(check(f("source.ip", "==", "10.0.0.7")));
        assert!(check(f("event.outcome", "==", "allow")));
        assert!(check(f("kubernetes.namespace", "==", "kube-system")));
    }

    #[test]
    fn empty_and_absent_fields_are_absent() {
        // The reason is an empty string: ECS leaves it out.
        assert!(!check(f("kubernetes.rbacreason", "exists", "")));
        assert!(check(f("kubernetes.rbacreason", "not exists", "")));
        assert!(!check(f("kubernetes.rbacreason", "==", "")));
        assert!(check(f("kubernetes.rbacreason", "!=", "")));
        assert!(!check(f("kubernetes.role.name", "contains", "")));
        assert!(check(f("kubernetes.subresource", "not contains", "exec")));
    }

    #[test]
    fn numbers_compare_as_numbers_and_arrays_by_any_element() {
        assert!(check(f("http.response.status_code", "==", "200")));
        assert!(check(f("http.response.status_code", "<", "300")));
        assert!(check(f("http.response.status_code", ">=", "200")));
        assert!(!check(f("http.response.status_code", ">", "200")));
        // 200 < 1000 numerically, though "200" > "1000" as text.
        assert!(check(f("http.response.status_code", "<", "1000")));
        assert!(check(f("event.start", ">", "2026-11-24T00:00:00Z")));
        assert!(check(f("user.roles", "==", "system:nodes")));
        assert!(!check(f("user.roles", "==", "system:masters")));
        assert!(check(f("user.roles", "not contains", "masters")));
    }

    #[test]
    fn a_rule_needs_all_its_filters() {
        let mut x = Extractor::new();
        let mut buf = EVENT.as_bytes().to_vec();
        let len = buf.len();
        let e = x.parse(&mut buf, len).unwrap();
        let rule = |filters| Rule {
            name: "r".into(),
            filters,
        };
        let both = rule(vec![
            f("user.name", "==", "system:kube-proxy"),
            f("event.action", "==", "get"),
        ]);
        let one_wrong = rule(vec![
            f("user.name", "==", "system:kube-proxy"),
            f("event.action", "==", "watch"),
        ]);
        assert!(both.matches(&e));
        assert!(!one_wrong.matches(&e));
        assert!(!rule(vec![]).matches(&e));
        assert_eq!(ignored_by(&[one_wrong, both], &e), Some(1));
    }
}
