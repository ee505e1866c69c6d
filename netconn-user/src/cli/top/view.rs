//! Drawing `top`, and nothing else: every frame is drawn whole from the
//! [`App`]; ratatui diffs it against the last one and writes only changed
//! cells, so a once-a-second refresh never flickers.
//!
//! Layout: a header line, the states table (exact counts per family, the
//! growth and a sparkline of the selected family view), the namespace rows,
//! who holds the selected state, the active leak alerts, the transitions
//! pane and a footer with the keys or what is wrong. At 80 columns these
//! stack; from 120 columns the breakdown and alerts move to the right of
//! the tables. Extra height goes to the transitions.

use std::time::Instant;

use netconn_common::Family;
use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::{Block, Clear, Paragraph, Wrap},
};

use super::{
    connection::Link,
    state::{App, SPARK_BUCKET, sparkline},
};
use crate::proto::{Severity, Transition};

/// Width of the fixed part of a states row (marker, name, five counts,
/// growth); the sparkline takes the rest.
const STATE_COLUMNS: u16 = 1 + 11 + 5 * 8 + 8;
/// From this width the breakdown and alerts sit beside the tables.
const WIDE: u16 = 120;

pub fn render(frame: &mut Frame, app: &App, now: Instant) {
    let area = frame.area();
    let [header, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(area);
    frame.render_widget(header_line(app), header);
    frame.render_widget(footer_line(app, now), footer);
    if app.selected().is_none() {
        frame.render_widget(waiting(app), body);
    } else if area.width >= WIDE {
        wide(frame, app, body);
    } else {
        narrow(frame, app, body);
    }
    if app.help {
        help(frame, area);
    }
}

fn narrow(frame: &mut Frame, app: &App, body: Rect) {
    let ns_h = app.namespaces.len().min(4) as u16 + 1;
    let who_h = 4;
    let alerts_h = app.alerts.len().clamp(1, 3) as u16 + 1;
    let min_transitions = 3;
    let wanted = app.visible_states().len() as u16 + 2;
    let room = body
        .height
        .saturating_sub(ns_h + who_h + alerts_h + min_transitions);
    let states_h = wanted.min(room).max(3);
    let [states, ns, who, alerts, transitions] = Layout::vertical([
        Constraint::Length(states_h),
        Constraint::Length(ns_h),
        Constraint::Length(who_h),
        Constraint::Length(alerts_h),
        Constraint::Fill(1),
    ])
    .areas(body);
    frame.render_widget(states_table(app, states), states);
    frame.render_widget(namespaces(app), ns);
    frame.render_widget(holders_compact(app, who.width), who);
    frame.render_widget(alert_lines(app), alerts);
    frame.render_widget(transition_lines(app, transitions), transitions);
}

fn wide(frame: &mut Frame, app: &App, body: Rect) {
    let ns_h = app.namespaces.len().min(8) as u16 + 1;
    let states_h = app.visible_states().len() as u16 + 2;
    let left_h = states_h + 1 + ns_h;
    let alerts_h = app.alerts.len().clamp(1, 5) as u16 + 1;
    // The lists as long as they are: two title lines, three titled lists.
    let lists = current_top(app).map_or(2, |t| {
        let o = &t.offenders;
        let len = |n: usize| n.max(1) as u16 + 1;
        2 + len(o.ports.len()) + len(o.remotes.len()) + len(o.processes.len())
    });
    let right_h = lists + 1 + alerts_h;
    let top_h = left_h.max(right_h).min(body.height.saturating_sub(4));
    let [top, transitions] =
        Layout::vertical([Constraint::Length(top_h), Constraint::Fill(1)]).areas(body);
    // The sparklines get what the breakdown (50 columns) leaves.
    let left_w = body
        .width
        .saturating_sub(52)
        .clamp(STATE_COLUMNS + 20, STATE_COLUMNS + 60);
    let [left, right] = Layout::horizontal([Constraint::Length(left_w), Constraint::Fill(1)])
        .spacing(2)
        .areas(top);
    let [states, _, ns] = Layout::vertical([
        Constraint::Length(states_h),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(left);
    let [who, _, alerts] = Layout::vertical([
        Constraint::Length(lists),
        Constraint::Length(1),
        Constraint::Fill(1),
    ])
    .areas(right);
    frame.render_widget(states_table(app, states), states);
    frame.render_widget(namespaces(app), ns);
    frame.render_widget(holders_lists(app, who), who);
    // Room below the lists: long alert messages wrap.
    frame.render_widget(alert_lines(app).wrap(Wrap { trim: false }), alerts);
    frame.render_widget(transition_lines(app, transitions), transitions);
}

fn title(text: impl Into<String>) -> Line<'static> {
    Line::from(Span::styled(
        text.into(),
        Style::new().add_modifier(Modifier::BOLD),
    ))
}

fn header_line(app: &App) -> Paragraph<'static> {
    let mut spans = vec![Span::styled("netconn top", Style::new().bold())];
    if let Some(ns) = app.selected_ns {
        spans.push(Span::raw(format!("  ns {ns}")));
    }
    spans.push(Span::raw(format!("  family {}", app.family_name())));
    if let Some(port) = app.port {
        spans.push(Span::raw(format!("  port {port}")));
    }
    match &app.meta {
        Some(meta) if app.link == Link::Up && meta.exact => {
            spans.push(Span::styled("  exact", Style::new().fg(Color::Green)));
        }
        Some(_) if app.link == Link::Up => {
            spans.push(Span::styled(
                "  NOT EXACT",
                Style::new().fg(Color::Red).bold(),
            ));
        }
        // Counts stay on screen while the agent is away, marked as old.
        Some(_) => spans.push(Span::styled(
            "  STALE (agent away)",
            Style::new().fg(Color::Red).bold(),
        )),
        None => {}
    }
    spans.push(Span::raw("  ? help"));
    Paragraph::new(Line::from(spans)).style(Style::new().reversed())
}

fn footer_line(app: &App, now: Instant) -> Paragraph<'static> {
    let red = Style::new().fg(Color::Red).bold();
    let line = if let Some(typed) = &app.input {
        Line::from(vec![
            Span::styled("port filter: ", Style::new().bold()),
            Span::raw(format!("{typed}_")),
            Span::raw("   Enter apply, empty clears, Esc cancel"),
        ])
    } else {
        match &app.link {
            Link::NoAgent(message) => Line::from(Span::styled(format!("{message}; retrying"), red)),
            Link::Failed(message) => Line::from(Span::styled(format!("{message}; retrying"), red)),
            Link::Connecting => Line::from(format!("connecting to {}", app.socket)),
            Link::Up => match (app.notice(now), &app.meta) {
                (Some(notice), _) => Line::from(Span::styled(
                    notice.to_string(),
                    Style::new().fg(Color::Yellow),
                )),
                (None, Some(meta)) if !meta.exact => Line::from(Span::styled(
                    format!("NOT EXACT: {}", meta.inexact.join("; ")),
                    red,
                )),
                _ => Line::from(
                    "↑↓ state  f family  n namespace  s sort  / port  p pause  ? help  q quit",
                ),
            },
        }
    };
    Paragraph::new(line)
}

/// No counts yet: say why, big enough to be seen.
fn waiting(app: &App) -> Paragraph<'static> {
    let mut lines = vec![Line::raw("")];
    match &app.link {
        Link::NoAgent(message) | Link::Failed(message) => {
            lines.push(Line::styled(
                format!("  {message}"),
                Style::new().fg(Color::Red).bold(),
            ));
            lines.push(Line::raw("  retrying every second; q quits"));
        }
        _ => lines.push(Line::raw(format!(
            "  waiting for the agent at {}",
            app.socket
        ))),
    }
    Paragraph::new(lines)
}

/// One row per state: exact counts per family and their total, the growth
/// per minute and a sparkline for the selected family view.
fn states_table(app: &App, area: Rect) -> Paragraph<'static> {
    let Some(ns) = app.selected() else {
        return Paragraph::new("");
    };
    let families = app.families();
    let spark_w = area.width.saturating_sub(STATE_COLUMNS + 1) as usize;
    let secs = SPARK_BUCKET.as_secs() * spark_w as u64;
    let span = match (secs / 60, secs % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s:02}s"),
    };
    let in_view = |f: Family| families.contains(&f);
    let head_style = |on: bool| {
        if on {
            Style::new().bold().underlined()
        } else {
            Style::new().bold()
        }
    };
    let mut header = vec![Span::styled(
        format!(" {:<11}", "STATE"),
        Style::new().bold(),
    )];
    for f in Family::ALL {
        header.push(Span::styled(
            format!("{:>8}", f.name()),
            head_style(in_view(f)),
        ));
    }
    header.push(Span::styled(
        format!("{:>8}", "total"),
        head_style(families.len() == Family::ALL.len()),
    ));
    header.push(Span::styled(
        format!("{:>7} ", "Δ/min"),
        Style::new().bold(),
    ));
    header.push(Span::styled(format!("last {span}"), Style::new().bold()));
    let mut lines = vec![Line::from(header)];

    let states = app.visible_states();
    // Keep the selected row on screen when not all fit.
    let room = (area.height as usize).saturating_sub(2).max(1);
    let at = states.iter().position(|&s| s == app.state).unwrap_or(0);
    let first = (at + 1).saturating_sub(room);
    let counts = ns.latest();
    for &state in states.iter().skip(first).take(room) {
        let selected = state == app.state;
        let mut row = vec![Span::raw(format!(
            "{}{:<11}",
            if selected { '>' } else { ' ' },
            state.name()
        ))];
        for f in Family::ALL {
            row.push(Span::raw(format!("{:>8}", counts.get(f, state))));
        }
        row.push(Span::raw(format!("{:>8}", counts.sum(&Family::ALL, state))));
        let growth = ns.growth(families, Some(state));
        row.push(Span::styled(
            format!("{:>+7.0} ", growth),
            growth_style(growth),
        ));
        row.push(Span::styled(
            sparkline(&ns.buckets(families, state, spark_w)),
            Style::new().fg(Color::Cyan),
        ));
        let line = Line::from(row);
        lines.push(if selected {
            line.style(Style::new().reversed())
        } else {
            line
        });
    }
    let mut total = vec![Span::styled(
        format!(" {:<11}", "total"),
        Style::new().bold(),
    )];
    for f in Family::ALL {
        total.push(Span::raw(format!("{:>8}", counts.family_total(f))));
    }
    total.push(Span::raw(format!("{:>8}", counts.total())));
    let growth = ns.growth(families, None);
    total.push(Span::styled(
        format!("{:>+7.0} ", growth),
        growth_style(growth),
    ));
    lines.push(Line::from(total).bold());
    Paragraph::new(lines)
}

fn growth_style(growth: f64) -> Style {
    if growth >= 1.0 {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new()
    }
}

/// One row per namespace (container), in the chosen order.
fn namespaces(app: &App) -> Paragraph<'static> {
    let families = app.families();
    let mut lines = vec![title(format!(
        " {:<12}{:>10}{:>8} {:>11}  {} (sorted by {}; n selects)",
        "NETNS",
        "sockets",
        "Δ/min",
        app.state.name(),
        "what",
        app.sort.name()
    ))];
    for ns in app.sorted_namespaces() {
        let selected = Some(ns.netns) == app.selected_ns;
        let exact = if ns.exact { "" } else { ", NOT EXACT" };
        let line = Line::raw(format!(
            "{}{:<12}{:>10}{:>+8.0} {:>11}  {}{exact}",
            if selected { '>' } else { ' ' },
            ns.netns,
            ns.count(families, None),
            ns.growth(families, None),
            ns.count(families, Some(app.state)),
            ns.label
        ));
        lines.push(if selected { line.bold() } else { line });
    }
    Paragraph::new(lines)
}

/// "who holds STATE (family)" and, once the agent answered, how many
/// sockets and how old the answer is.
fn holders_title(app: &App) -> (String, String) {
    let head = format!(" who holds {} ({})", app.state.name(), app.family_name());
    let mut tail = String::new();
    if let Some(top) = current_top(app) {
        tail = format!("{} sockets, {:.0} s old", top.sockets, top.age_ms / 1e3);
        if Some(top.netns) != app.selected_ns {
            tail += " (the agent's namespace only)";
        }
    }
    (head, tail)
}

/// The breakdown for the selected state, when it is the one on screen.
fn current_top(app: &App) -> Option<&crate::proto::TopReply> {
    app.top
        .as_ref()
        .filter(|t| t.state == app.state.name() && t.family == app.family_name())
}

/// Ports, remotes and processes on one line each (80 columns).
fn holders_compact(app: &App, width: u16) -> Paragraph<'static> {
    let (head, tail) = holders_title(app);
    let mut lines = vec![title(if tail.is_empty() {
        head
    } else {
        format!("{head}: {tail}")
    })];
    let Some(top) = current_top(app) else {
        let why = app
            .top_error
            .clone()
            .unwrap_or_else(|| "asking the agent".into());
        lines.push(Line::raw(format!("   {why}")));
        return Paragraph::new(lines);
    };
    let fit = |label: &str, items: Vec<String>| {
        let mut line = format!("   {label:<10}");
        if items.is_empty() {
            line += "-";
        }
        for item in items {
            if line.chars().count() + item.chars().count() + 2 > width as usize {
                break;
            }
            line += &item;
            line += "  ";
        }
        Line::raw(line)
    };
    let o = &top.offenders;
    lines.push(fit(
        "ports",
        o.ports
            .iter()
            .map(|p| format!("{} ({})", p.port, p.sockets))
            .collect(),
    ));
    lines.push(fit(
        "remotes",
        o.remotes
            .iter()
            .map(|r| format!("{} ({})", r.addr, r.sockets))
            .collect(),
    ));
    lines.push(fit(
        "processes",
        o.processes
            .iter()
            .map(|p| format!("{}[{}] ({})", p.comm, p.pid, p.sockets))
            .collect(),
    ));
    Paragraph::new(lines)
}

/// Ports, remotes and processes as three lists (wide terminals).
fn holders_lists(app: &App, area: Rect) -> Paragraph<'static> {
    let (head, tail) = holders_title(app);
    let mut lines = vec![title(head), Line::raw(format!("   {tail}"))];
    let Some(top) = current_top(app) else {
        let why = app
            .top_error
            .clone()
            .unwrap_or_else(|| "asking the agent".into());
        lines.push(Line::raw(format!("   {why}")));
        return Paragraph::new(lines);
    };
    let o = &top.offenders;
    // All of each list when they fit, else an equal share each.
    let needed = 2 + [o.ports.len(), o.remotes.len(), o.processes.len()]
        .iter()
        .map(|n| n.max(&1) + 1)
        .sum::<usize>();
    let each = if needed <= area.height as usize {
        usize::MAX
    } else {
        ((area.height as usize).saturating_sub(5) / 3).max(1)
    };
    let mut list = |label: &str, items: Vec<String>| {
        lines.push(Line::styled(
            format!("   {label}"),
            Style::new().underlined(),
        ));
        if items.is_empty() {
            lines.push(Line::raw("     -"));
        }
        for item in items.into_iter().take(each) {
            lines.push(Line::raw(format!("     {item}")));
        }
    };
    list(
        "local ports",
        o.ports
            .iter()
            .map(|p| format!("{:>7}  {}", p.sockets, p.port))
            .collect(),
    );
    list(
        "remote endpoints",
        o.remotes
            .iter()
            .map(|r| format!("{:>7}  {}", r.sockets, r.addr))
            .collect(),
    );
    list(
        "processes",
        o.processes
            .iter()
            .map(|p| format!("{:>7}  {} {}", p.sockets, p.pid, p.comm))
            .collect(),
    );
    Paragraph::new(lines)
}

fn alert_lines(app: &App) -> Paragraph<'static> {
    let mut lines = vec![title(format!(" leak alerts ({} active)", app.alerts.len()))];
    if app.alerts.is_empty() {
        lines.push(Line::raw("   none"));
    }
    let mut alerts: Vec<_> = app.alerts.iter().collect();
    alerts.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.rule.cmp(&b.rule)));
    for a in alerts {
        let (tag, style) = match a.severity {
            Severity::Critical => ("CRIT", Style::new().fg(Color::Red).bold()),
            Severity::Warning => ("WARN", Style::new().fg(Color::Yellow)),
        };
        lines.push(Line::from(vec![
            Span::styled(format!("   {tag} "), style),
            Span::raw(a.message.clone()),
        ]));
    }
    Paragraph::new(lines)
}

fn transition_lines(app: &App, area: Rect) -> Paragraph<'static> {
    let shown = app.shown_transitions();
    let mut head = format!(" transitions in ns {}", app.selected_ns.unwrap_or(0));
    if let Some(port) = app.port {
        head += &format!(", port {port}");
    }
    let mut spans = vec![Span::styled(head, Style::new().bold())];
    if app.paused() {
        spans.push(Span::styled(
            format!("  PAUSED ({} new; p resumes)", app.new_while_paused),
            Style::new().fg(Color::Yellow).bold(),
        ));
    }
    if app.dropped > 0 {
        spans.push(Span::raw(format!("  {} dropped", app.dropped)));
    }
    if let Some(e) = &app.watch_error {
        spans.push(Span::styled(format!("  {e}"), Style::new().fg(Color::Red)));
    }
    let mut lines = vec![Line::from(spans)];
    if shown.is_empty() {
        lines.push(Line::raw("   none yet (newest first)"));
    }
    let room = (area.height as usize).saturating_sub(1);
    lines.extend(shown.into_iter().take(room).map(transition_line));
    Paragraph::new(lines)
}

fn transition_line(t: &Transition) -> Line<'static> {
    let endpoint = |addr: &str, port: u16| {
        if addr.contains(':') {
            format!("[{addr}]:{port}")
        } else {
            format!("{addr}:{port}")
        }
    };
    let time = t.time.get(11..23).unwrap_or(&t.time);
    let owner = match (t.pid, &t.comm) {
        (Some(pid), Some(comm)) => format!(" {comm}[{pid}]"),
        _ => String::new(),
    };
    Line::raw(format!(
        " {time} {} {} {} {}>{}{owner}",
        t.family,
        endpoint(&t.laddr, t.lport),
        endpoint(&t.raddr, t.rport),
        t.old,
        t.new
    ))
}

/// The keys, over the view.
fn help(frame: &mut Frame, area: Rect) {
    let keys = [
        ("↑ ↓  k j", "select a state (breakdown follows it)"),
        ("f  F", "next / previous family: all tcp udp tcp4 ..."),
        ("n  Tab", "select the next namespace (N: previous)"),
        ("s", "sort namespaces: growth, sockets, netns"),
        ("/", "filter transitions by port (empty clears)"),
        ("Esc", "clear the port filter"),
        ("p  space", "pause / resume the transitions pane"),
        ("?", "this help"),
        ("q  Ctrl-C", "quit"),
    ];
    let mut lines: Vec<Line> = keys
        .iter()
        .map(|(k, what)| Line::raw(format!(" {k:<10} {what}")))
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::raw(" any key closes this help"));
    let w = 58.min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let popup = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" netconn top: keys ")),
        popup,
    );
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use netconn_common::{Counts, State};
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{
        cli::top::{
            connection::Update,
            state::{App, Key},
        },
        proto::{Meta, StatsReply},
    };

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
        terminal.draw(|f| render(f, app, Instant::now())).unwrap();
        let buffer = terminal.backend().buffer();
        let mut out = String::new();
        for y in 0..h {
            for x in 0..w {
                out.push_str(buffer[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    fn app_with_counts() -> App {
        let mut app = App::new("/tmp/s.sock".into());
        app.apply(Update::Link(Link::Up), Instant::now());
        let mut counts = Counts::default();
        for (i, state) in State::ALL.into_iter().enumerate() {
            counts.set(Family::Tcp4, state, 1000 + i as u64);
            counts.set(Family::Udp6, state, 7);
        }
        let t0 = Instant::now();
        for i in 0..3 {
            app.apply(
                Update::Poll {
                    stats: Box::new(StatsReply {
                        counts,
                        meta: Meta {
                            netns: 4026531840,
                            exact: true,
                            ..Meta::default()
                        },
                    }),
                    all: None,
                    alerts: Vec::new(),
                },
                t0 + Duration::from_secs(i),
            );
        }
        app
    }

    #[test]
    fn fits_80x24_with_every_state_and_keeps_the_selection_visible() {
        let mut app = app_with_counts();
        let text = screen(&app, 80, 24);
        assert!(
            text.contains(">ESTABLISHED    1000       0       0       7    1007"),
            "{text}"
        );
        assert!(text.contains("leak alerts"), "{text}");
        assert!(text.contains("transitions"), "{text}");
        assert!(text.contains("4026531840"), "{text}");
        for _ in 0..11 {
            app.key(Key::Down);
        }
        let text = screen(&app, 80, 24);
        assert!(text.contains(">UNKNOWN"), "{text}");
        app.key(Key::Char('?'));
        let text = screen(&app, 80, 24);
        assert!(text.contains("pause / resume"), "{text}");
    }

    #[test]
    fn wide_terminals_list_the_breakdown_beside_the_tables() {
        let mut app = app_with_counts();
        let top: crate::proto::TopReply = serde_json::from_value(serde_json::json!({
            "state": "ESTABLISHED", "family": "all", "netns": 4026531840u32, "sockets": 1000,
            "age_ms": 1200.0, "ports": [{"port": 8080, "sockets": 900}],
            "remotes": [{"addr": "10.0.0.1:443", "sockets": 3}],
            "processes": [{"pid": 42, "comm": "leaky", "sockets": 999}]
        }))
        .unwrap();
        app.apply(Update::Top(Box::new(top)), Instant::now());
        let text = screen(&app, 160, 50);
        assert!(text.contains("42 leaky"), "{text}");
        let text = screen(&app, 80, 24);
        assert!(text.contains("leaky[42] (999)"), "{text}");
        let text = screen(&app, 160, 50);
        assert!(text.contains("local ports"), "{text}");
        assert!(text.contains("ESTABLISHED"), "{text}");
    }

    #[test]
    fn says_when_the_agent_is_not_exact_and_when_it_is_away() {
        let mut app = app_with_counts();
        let mut counts = Counts::default();
        counts.set(Family::Tcp4, State::Listen, 1);
        app.apply(
            Update::Poll {
                stats: Box::new(StatsReply {
                    counts,
                    meta: Meta {
                        netns: 4026531840,
                        exact: false,
                        inexact: vec!["per-socket map full".into()],
                        ..Meta::default()
                    },
                }),
                all: None,
                alerts: Vec::new(),
            },
            Instant::now(),
        );
        let text = screen(&app, 80, 24);
        assert!(text.contains("NOT EXACT: per-socket map full"), "{text}");
        assert!(text.contains("agent's namespace, NOT EXACT"), "{text}");
        app.apply(
            Update::Link(Link::NoAgent("lost the netconn agent".into())),
            Instant::now(),
        );
        let text = screen(&app, 80, 24);
        assert!(text.contains("STALE (agent away)"), "{text}");
        assert!(text.contains("lost the netconn agent; retrying"), "{text}");
    }

    #[test]
    fn says_when_no_agent_runs() {
        let mut app = App::new("/tmp/s.sock".into());
        app.apply(
            Update::Link(Link::NoAgent("no netconn agent at /tmp/s.sock".into())),
            Instant::now(),
        );
        let text = screen(&app, 80, 24);
        assert!(text.contains("no netconn agent at /tmp/s.sock"), "{text}");
    }
}
