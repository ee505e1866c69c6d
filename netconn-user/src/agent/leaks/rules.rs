//! Leak rules: the built-in defaults and the TOML file of `--rules FILE`.
//!
//! ```toml
//! [[rule]]
//! name = "close-wait-age"  # default: "<state>-<kind>", e.g. "close-wait-age"
//! kind = "age"             # count | growth | age
//! family = "tcp"           # tcp, tcp4, tcp6, udp, udp4, udp6, all (default all)
//! state = "CLOSE_WAIT"     # a state name as in `stats` (case-insensitive)
//! severity = "critical"    # warning | critical (default warning)
//! older_than = "5m"        # age: socket age in its state (humantime)
//! min_sockets = 1          # age: fire when at least this many are older (default 1)
//!
//! [[rule]]
//! kind = "growth"
//! state = "CLOSE_WAIT"
//! per_minute = 100         # growth: fire above this many sockets per minute
//! window = "1m"            # growth: over this window (default 1m)
//!
//! [[rule]]
//! kind = "count"
//! state = "TIME_WAIT"
//! above = 50000            # count: fire above this many sockets
//! for = "2m"               # count: ... continuously this long (default 1m, "0s": at once)
//! ```
//!
//! Anything else is an error naming the rule: unknown keys, keys of another
//! kind (a `window` on a count rule is a mistake, not a no-op), unknown names,
//! zero windows or ages, duplicate rule names. A file without rules disables
//! leak detection.

use std::{collections::HashMap, path::Path, time::Duration};

use netconn_common::{Family, State, model::GROUPS};

use wildmatch::WildMatch;

use crate::proto::{Container, RuleKind, Severity};

/// Which families a rule adds up, by the names `stats --json` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyGroup {
    pub name: &'static str,
    pub families: &'static [Family],
}

impl FamilyGroup {
    const fn new(name: &'static str, families: &'static [Family]) -> FamilyGroup {
        FamilyGroup { name, families }
    }

    /// One of the stats JSON's seven groups (`netconn_common::model::GROUPS`).
    pub fn by_name(name: &str) -> Option<FamilyGroup> {
        GROUPS
            .into_iter()
            .find(|(g, _)| *g == name)
            .map(|(name, families)| FamilyGroup::new(name, families))
    }

    pub fn contains(&self, family: Family) -> bool {
        self.families.contains(&family)
    }
}

/// What a rule tests, with the parameters of its kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Condition {
    /// Count above `above` continuously for at least `duration` (zero: at once).
    Count { above: u64, duration: Duration },
    /// Growth above `per_minute`, measured over `window`.
    Growth { per_minute: f64, window: Duration },
    /// At least `min_sockets` sockets in the state for `older_than` or longer.
    Age {
        older_than: Duration,
        min_sockets: u64,
    },
}

impl Condition {
    pub fn kind(&self) -> RuleKind {
        match self {
            Condition::Count { .. } => RuleKind::Count,
            Condition::Growth { .. } => RuleKind::Growth,
            Condition::Age { .. } => RuleKind::Age,
        }
    }
}

/// Which network namespaces a rule watches. Without `netns` or `container`
/// only the agent's own (as before namespaces were tracked); otherwise every
/// namespace whose name matches `netns` and whose container matches
/// `container`, both globs (`*`, `?`): `netns = "*"` watches all of them,
/// `container = "docker:*"` every Docker container.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scope {
    pub netns: Option<String>,
    pub container: Option<String>,
}

impl Scope {
    pub fn matches(&self, own: bool, name: &str, container: Option<&Container>) -> bool {
        if self.netns.is_none() && self.container.is_none() {
            return own;
        }
        let netns_ok = self
            .netns
            .as_ref()
            .is_none_or(|g| WildMatch::new(g).matches(name));
        let container_ok = self.container.as_ref().is_none_or(|g| {
            container.is_some_and(|c| {
                let glob = WildMatch::new(g);
                glob.matches(&format!("{}:{}", c.runtime, c.id)) || glob.matches(&c.id)
            })
        });
        netns_ok && container_ok
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// The namespaces it watches.
    pub scope: Scope,
    pub name: String,
    pub family: FamilyGroup,
    pub state: State,
    pub severity: Severity,
    pub condition: Condition,
}

#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("rules file line {line}: {message}")]
    Syntax { line: usize, message: String },
    /// `index` counts from 1, in file order.
    #[error("rule {index}{}: {problem}", name_suffix(.name))]
    Rule {
        index: usize,
        name: Option<String>,
        problem: String,
    },
}

fn name_suffix(name: &Option<String>) -> String {
    name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
}

/// The rules used when no file is given:
/// - `close-wait-age`: tcp CLOSE_WAIT older than 5m, at least 1 (warning);
/// - `close-wait-growth`: tcp CLOSE_WAIT growing > 100/min over 1m (warning);
/// - `time-wait-count`: tcp TIME_WAIT above 100000 for 1m (warning).
pub fn default_rules() -> Vec<Rule> {
    let tcp = FamilyGroup::new("tcp", &[Family::Tcp4, Family::Tcp6]);
    let rule = |name: &str, state, condition| Rule {
        scope: Scope::default(),
        name: name.to_string(),
        family: tcp,
        state,
        severity: Severity::Warning,
        condition,
    };
    vec![
        rule(
            "close-wait-age",
            State::CloseWait,
            Condition::Age {
                older_than: Duration::from_secs(300),
                min_sockets: 1,
            },
        ),
        rule(
            "close-wait-growth",
            State::CloseWait,
            Condition::Growth {
                per_minute: 100.0,
                window: Duration::from_secs(60),
            },
        ),
        rule(
            "time-wait-count",
            State::TimeWait,
            Condition::Count {
                above: 100_000,
                duration: Duration::from_secs(60),
            },
        ),
    ]
}

pub fn load_rules(path: &Path) -> Result<Vec<Rule>, RulesError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_rules(&text)
}

/// The keys a `[[rule]]` table may have.
const KEYS: [&str; 13] = [
    "name",
    "kind",
    "family",
    "state",
    "severity",
    "above",
    "for",
    "per_minute",
    "window",
    "older_than",
    "min_sockets",
    "netns",
    "container",
];

/// One `[[rule]]` table, read key by key so that every error names its key.
struct RawRule(toml::Table);

impl RawRule {
    fn string(&mut self, key: &str) -> Result<Option<String>, String> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(format!("`{key}` must be a string, not {}", v.type_str())),
        }
    }

    fn integer(&mut self, key: &str) -> Result<Option<u64>, String> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => u64::try_from(n)
                .map(Some)
                .map_err(|_| format!("`{key}` must not be negative, not {n}")),
            Some(v) => Err(format!(
                "`{key}` must be a whole number, not {}",
                v.type_str()
            )),
        }
    }

    fn number(&mut self, key: &str) -> Result<Option<f64>, String> {
        match self.0.remove(key) {
            None => Ok(None),
            Some(toml::Value::Integer(n)) => Ok(Some(n as f64)),
            Some(toml::Value::Float(x)) => Ok(Some(x)),
            Some(v) => Err(format!("`{key}` must be a number, not {}", v.type_str())),
        }
    }
}

pub fn parse_rules(text: &str) -> Result<Vec<Rule>, RulesError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| RulesError::Syntax {
        line: e
            .span()
            .map_or(1, |s| text[..s.start].matches('\n').count() + 1),
        message: e.message().trim_end().to_string(),
    })?;
    if let Some(key) = table.keys().find(|k| *k != "rule") {
        return Err(RulesError::Syntax {
            line: line_of_key(text, key),
            message: format!("unknown key `{key}` (rules are [[rule]] tables)"),
        });
    }
    let raws = match table.remove("rule") {
        None => return Ok(Vec::new()),
        Some(toml::Value::Array(raws)) => raws,
        Some(_) => {
            return Err(RulesError::Syntax {
                line: line_of_key(text, "rule"),
                message: "`rule` must be an array of tables: write [[rule]]".to_string(),
            });
        }
    };

    let mut rules = Vec::with_capacity(raws.len());
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, raw) in raws.into_iter().enumerate() {
        let index = i + 1;
        // The name is read first so that every later error can show it.
        let name = raw.get("name").and_then(|v| v.as_str()).map(str::to_string);
        let fail = |problem: String| RulesError::Rule {
            index,
            name: name.clone(),
            problem,
        };
        let toml::Value::Table(table) = raw else {
            return Err(fail(format!("must be a table, not {}", raw.type_str())));
        };
        let rule = build_rule(RawRule(table)).map_err(fail)?;
        if let Some(first) = seen.insert(rule.name.clone(), index) {
            return Err(fail(format!(
                "duplicate rule name \"{}\" (also rule {first}); give one a distinct `name`",
                rule.name
            )));
        }
        rules.push(rule);
    }
    Ok(rules)
}

/// Best-effort line of a top-level key for an error message.
fn line_of_key(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('[');
            l.starts_with(key)
        })
        .map_or(1, |i| i + 1)
}

fn build_rule(mut raw: RawRule) -> Result<Rule, String> {
    if let Some(key) = raw.0.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "unknown key `{key}` (expected one of {})",
            KEYS.join(", ")
        ));
    }
    let kind = match raw.string("kind")?.as_deref() {
        Some("count") => RuleKind::Count,
        Some("growth") => RuleKind::Growth,
        Some("age") => RuleKind::Age,
        Some(other) => {
            return Err(format!(
                "unknown kind \"{other}\" (expected count, growth or age)"
            ));
        }
        None => return Err("missing `kind` (count, growth or age)".to_string()),
    };
    let severity = match raw.string("severity")?.as_deref() {
        None | Some("warning") => Severity::Warning,
        Some("critical") => Severity::Critical,
        Some(other) => {
            return Err(format!(
                "unknown severity \"{other}\" (expected warning or critical)"
            ));
        }
    };
    let state_name = raw
        .string("state")?
        .ok_or("missing `state` (e.g. \"CLOSE_WAIT\")")?;
    let state = State::ALL
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(&state_name))
        .ok_or_else(|| {
            let names: Vec<&str> = State::ALL.iter().map(|s| s.name()).collect();
            format!(
                "unknown state \"{state_name}\" (expected one of {})",
                names.join(", ")
            )
        })?;
    let family = match raw.string("family")?.as_deref() {
        None => FamilyGroup::new("all", &Family::ALL),
        Some(f) => FamilyGroup::by_name(f).ok_or_else(|| {
            format!("unknown family \"{f}\" (expected tcp, tcp4, tcp6, udp, udp4, udp6 or all)")
        })?,
    };
    let name = raw.string("name")?;
    let above = raw.integer("above")?;
    let for_ = raw.string("for")?;
    let per_minute = raw.number("per_minute")?;
    let window = raw.string("window")?;
    let older_than = raw.string("older_than")?;
    let min_sockets = raw.integer("min_sockets")?;

    // Keys that belong to another kind are refused: silently ignoring them
    // would leave the user believing a threshold is in force.
    let given = [
        ("above", above.is_some(), RuleKind::Count),
        ("for", for_.is_some(), RuleKind::Count),
        ("per_minute", per_minute.is_some(), RuleKind::Growth),
        ("window", window.is_some(), RuleKind::Growth),
        ("older_than", older_than.is_some(), RuleKind::Age),
        ("min_sockets", min_sockets.is_some(), RuleKind::Age),
    ];
    if let Some((key, _, owner)) = given.iter().find(|(_, set, owner)| *set && *owner != kind) {
        return Err(format!(
            "`{key}` belongs to {} rules, not to a {} rule",
            owner.name(),
            kind.name()
        ));
    }

    let condition = match kind {
        RuleKind::Count => Condition::Count {
            above: above.ok_or("a count rule needs `above`")?,
            duration: match for_ {
                Some(d) => duration("for", &d, true)?,
                None => Duration::from_secs(60),
            },
        },
        RuleKind::Growth => {
            let per_minute = per_minute.ok_or("a growth rule needs `per_minute`")?;
            if !(per_minute.is_finite() && per_minute > 0.0) {
                return Err(format!(
                    "`per_minute` must be a positive number, not {per_minute}"
                ));
            }
            Condition::Growth {
                per_minute,
                window: match window {
                    Some(w) => duration("window", &w, false)?,
                    None => Duration::from_secs(60),
                },
            }
        }
        RuleKind::Age => Condition::Age {
            older_than: duration(
                "older_than",
                &older_than.ok_or("an age rule needs `older_than`")?,
                false,
            )?,
            min_sockets: match min_sockets {
                Some(0) => return Err("`min_sockets` must be at least 1".to_string()),
                Some(n) => n,
                None => 1,
            },
        },
    };

    let name = match name {
        Some(n) if n.trim().is_empty() => return Err("`name` is empty".to_string()),
        Some(n) => n,
        None => format!(
            "{}-{}",
            state.name().to_ascii_lowercase().replace('_', "-"),
            kind.name()
        ),
    };
    let scope = Scope {
        netns: raw.string("netns")?,
        container: raw.string("container")?,
    };
    Ok(Rule {
        scope,
        name,
        family,
        state,
        severity,
        condition,
    })
}

fn duration(key: &str, text: &str, zero_ok: bool) -> Result<Duration, String> {
    let d = humantime::parse_duration(text)
        .map_err(|e| format!("`{key}` = \"{text}\" is not a duration like \"5m\": {e}"))?;
    if d.is_zero() && !zero_ok {
        return Err(format!("`{key}` must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        match parse_rules(text) {
            Ok(rules) => panic!("expected an error, got {rules:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn example_file_parses_with_defaults_filled_in() {
        let rules = parse_rules(
            r#"
            [[rule]]
            name = "cw"
            kind = "age"
            family = "tcp6"
            state = "close_wait"
            older_than = "5m"
            severity = "critical"
            min_sockets = 3

            [[rule]]
            kind = "growth"
            state = "CLOSE_WAIT"
            per_minute = 100

            [[rule]]
            kind = "count"
            state = "TIME_WAIT"
            above = 50000
            for = "2m"
            "#,
        )
        .unwrap();
        assert_eq!(rules.len(), 3);
        assert_eq!(rules[0].name, "cw");
        assert_eq!(rules[0].family.families, &[Family::Tcp6]);
        assert_eq!(rules[0].state, State::CloseWait);
        assert_eq!(rules[0].severity, Severity::Critical);
        assert_eq!(
            rules[0].condition,
            Condition::Age {
                older_than: Duration::from_secs(300),
                min_sockets: 3
            }
        );
        assert_eq!(rules[1].name, "close-wait-growth");
        assert_eq!(rules[1].family.name, "all");
        assert_eq!(rules[1].severity, Severity::Warning);
        assert_eq!(
            rules[1].condition,
            Condition::Growth {
                per_minute: 100.0,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(rules[2].name, "time-wait-count");
        assert_eq!(
            rules[2].condition,
            Condition::Count {
                above: 50000,
                duration: Duration::from_secs(120)
            }
        );
    }

    #[test]
    fn empty_file_means_no_rules_and_defaults_are_three_warnings() {
        assert!(parse_rules("# nothing\n").unwrap().is_empty());
        let d = default_rules();
        let names: Vec<&str> = d.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["close-wait-age", "close-wait-growth", "time-wait-count"]
        );
        assert!(d.iter().all(|r| r.severity == Severity::Warning));
        assert!(d.iter().all(|r| r.family.name == "tcp"));
    }

    #[test]
    fn scopes_match_namespaces_and_containers_by_glob() {
        let docker = Container {
            runtime: "docker".into(),
            id: "0123456789abcdef".into(),
            pod: None,
        };
        let rules = parse_rules(
            r#"
            [[rule]]
            name = "own"
            kind = "count"
            state = "CLOSE_WAIT"
            above = 1
            [[rule]]
            name = "all"
            kind = "count"
            state = "CLOSE_WAIT"
            above = 1
            netns = "*"
            [[rule]]
            name = "docker"
            kind = "count"
            state = "CLOSE_WAIT"
            above = 1
            container = "docker:0123*"
            [[rule]]
            name = "web"
            kind = "count"
            state = "CLOSE_WAIT"
            above = 1
            netns = "web-?"
            "#,
        )
        .unwrap();
        let m = |i: usize, own, name, c| rules[i].scope.matches(own, name, c);
        assert!(m(0, true, "host", None) && !m(0, false, "blue", None));
        assert!(m(1, false, "blue", None) && m(1, true, "host", None));
        assert!(m(2, false, "docker:0123456789ab", Some(&docker)));
        assert!(!m(2, false, "blue", None));
        assert!(m(3, false, "web-1", None) && !m(3, false, "web-10", None));
    }

    #[test]
    fn count_for_zero_is_allowed_and_means_at_once() {
        let r = parse_rules("[[rule]]\nkind='count'\nstate='LISTEN'\nabove=0\nfor='0s'\n").unwrap();
        assert_eq!(
            r[0].condition,
            Condition::Count {
                above: 0,
                duration: Duration::ZERO
            }
        );
    }

    #[test]
    fn each_validation_error_names_the_rule_and_the_problem() {
        let ok = "[[rule]]\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='5m'\n";
        let cases: &[(&str, &str)] = &[
            (
                "[[rule]]\nname='x'\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='5m'\ncolour='red'\n",
                "rule 1 (x): unknown key `colour` (expected one of name, kind,",
            ),
            (
                "[[rule]]\nkind='age'\nstate='CLOSE-WAIT'\nolder_than='5m'\n",
                "rule 1: unknown state \"CLOSE-WAIT\" (expected one of ESTABLISHED,",
            ),
            (
                "[[rule]]\nkind='leak'\nstate='CLOSE_WAIT'\n",
                "rule 1: unknown kind \"leak\" (expected count, growth or age)",
            ),
            (
                "[[rule]]\nkind='age'\nfamily='sctp'\nstate='CLOSE_WAIT'\nolder_than='5m'\n",
                "rule 1: unknown family \"sctp\"",
            ),
            (
                "[[rule]]\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='5m'\nseverity='fatal'\n",
                "rule 1: unknown severity \"fatal\" (expected warning or critical)",
            ),
            (
                "[[rule]]\nkind='growth'\nstate='CLOSE_WAIT'\nper_minute=10\nwindow='0s'\n",
                "rule 1: `window` must be longer than zero",
            ),
            (
                "[[rule]]\nkind='growth'\nstate='CLOSE_WAIT'\nper_minute=10\nwindow='-1m'\n",
                "rule 1: `window` = \"-1m\" is not a duration",
            ),
            (
                "[[rule]]\nkind='growth'\nstate='CLOSE_WAIT'\nper_minute=-5\n",
                "rule 1: `per_minute` must be a positive number, not -5",
            ),
            (
                "[[rule]]\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='0s'\n",
                "rule 1: `older_than` must be longer than zero",
            ),
            (
                "[[rule]]\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='5m'\nmin_sockets=0\n",
                "rule 1: `min_sockets` must be at least 1",
            ),
            (
                "[[rule]]\nkind='count'\nstate='TIME_WAIT'\nabove=-1\n",
                "rule 1: `above` must not be negative, not -1",
            ),
            (
                "[[rule]]\nkind='count'\nstate='TIME_WAIT'\nabove='many'\n",
                "rule 1: `above` must be a whole number, not string",
            ),
            (
                "[[rule]]\nkind='growth'\nstate='CLOSE_WAIT'\nper_minute='fast'\n",
                "rule 1: `per_minute` must be a number, not string",
            ),
            (
                "[[rule]]\nkind='age'\nstate=8\n",
                "rule 1: `state` must be a string, not integer",
            ),
            (
                "[[rule]]\nkind='count'\nstate='TIME_WAIT'\n",
                "rule 1: a count rule needs `above`",
            ),
            (
                "[[rule]]\nkind='count'\nstate='TIME_WAIT'\nabove=5\nwindow='1m'\n",
                "rule 1: `window` belongs to growth rules, not to a count rule",
            ),
            ("[[rule]]\nstate='TIME_WAIT'\n", "rule 1: missing `kind`"),
            (
                "[[rule]]\nkind='count'\nabove=1\n",
                "rule 1: missing `state`",
            ),
        ];
        for (text, want) in cases {
            // A valid rule first, so the bad one is rule 2.
            let got = err(&format!("{ok}{text}"));
            let want = want.replacen("rule 1", "rule 2", 1);
            assert!(got.starts_with(&want), "got {got:?}, want {want:?}");
            assert!(!got.contains('\n'), "not one line: {got:?}");
        }
    }

    #[test]
    fn file_level_errors_are_one_line_with_a_line_number() {
        assert_eq!(
            err(
                "[[rule]]\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='5m'\n[[rule]]\nname='close-wait-age'\nkind='age'\nstate='CLOSE_WAIT'\nolder_than='9m'\n"
            ),
            "rule 2 (close-wait-age): duplicate rule name \"close-wait-age\" (also rule 1); give one a distinct `name`"
        );
        assert_eq!(
            err("rules = 1\n"),
            "rules file line 1: unknown key `rules` (rules are [[rule]] tables)"
        );
        assert_eq!(err("rule = [1]\n"), "rule 1: must be a table, not integer");
        assert_eq!(
            err("[rule]\nkind='age'\n"),
            "rules file line 1: `rule` must be an array of tables: write [[rule]]"
        );
        let syntax = err("[[rule]]\nkind = 'age\n");
        assert!(syntax.starts_with("rules file line 2: "), "{syntax}");
        assert!(!syntax.contains('\n'), "{syntax}");
        let missing = load_rules(Path::new("/nonexistent/rules.toml")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read rules file /nonexistent/rules.toml: "),
            "{missing}"
        );
    }
}
