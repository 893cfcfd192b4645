"""``pilotlog timeline --html FILE``: one self-contained page with the summary and a per-pilot
timeline chart on a common time axis.

Self-contained means nothing is fetched: CSS, SVG and a small script are inline, so the
page opens from a mail attachment or a node without network.  Every row is rendered in the
HTML itself (the page reads without the script); the script only sorts and filters the rows
(by last phase, site, or a pilot-id search), which a day of 1,000 pilots needs.

Every text from the events is HTML-escaped, and what is not printable escaped as in the
terminal (``escape_controls``: no bidi override reorders a message): it comes from worker nodes.
"""

from html import escape

from .events import escape_controls
from .timeline import duration_text

WIDTH = 900  # px of the time axis
ROW = 22
COLOURS = {
    "boot": "#4c78a8",
    "install": "#72b7b2",
    "power": "#54a24b",
    "os": "#9d755d",
    "match": "#2ca02c",
    "nomatch": "#f58518",
    "shutdown": "#7f7f7f",
}
ERROR = "#d62728"
OTHER = "#b279a2"
FOLD_ABOVE = 20  # rows of a summary table shown unfolded
MAX_ROWS = 5000  # pilots drawn: a day of 100,000 would make a page no browser opens

STYLE = (
    "body{font:14px sans-serif;margin:1.5em}td,th{padding:1px 8px;white-space:nowrap;text-align:left}"
    ".pilot{font-family:monospace}.n{text-align:right}.span{stroke:#bbb;stroke-width:3}"
    "table.counts{border-collapse:collapse}table.counts td{border-bottom:1px solid #eee}"
    "#lifecycles th{position:sticky;top:0;background:#fff;cursor:pointer;border-bottom:1px solid #ccc}"
    "#lifecycles tbody tr:nth-child(even){background:#fafafa}.controls{margin:.5em 0}"
    ".controls label{margin-right:1.5em}"
)

# Sorting and filtering only: rows, marks and texts are all in the HTML already.  Values come
# from data-* attributes, never from the page's text, so nothing a pilot wrote is evaluated.
SCRIPT = """
(function () {
  var body = document.querySelector('#lifecycles tbody');
  var rows = Array.prototype.slice.call(body.rows);
  var phase = document.getElementById('f-phase'), site = document.getElementById('f-site');
  var search = document.getElementById('f-pilot'), shown = document.getElementById('shown');
  function apply() {
    var n = 0, text = search.value.toLowerCase();
    rows.forEach(function (r) {
      var ok = (!phase.value || r.dataset.last === phase.value) && (!site.value || r.dataset.site === site.value)
        && (!text || r.dataset.pilot.toLowerCase().indexOf(text) >= 0);
      r.hidden = !ok;
      if (ok) { n++; }
    });
    shown.textContent = n;
  }
  var order = {key: 'start', dir: 1};
  function sortBy(key) {
    order = {key: key, dir: order.key === key ? -order.dir : 1};
    var numeric = key === 'start' || key === 'duration' || key === 'logs';
    rows.sort(function (a, b) {
      var x = a.dataset[key], y = b.dataset[key];
      if (numeric) { x = parseFloat(x); y = parseFloat(y); }
      return (x < y ? -1 : x > y ? 1 : 0) * order.dir;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }
  [phase, site].forEach(function (el) { el.addEventListener('change', apply); });
  search.addEventListener('input', apply);
  Array.prototype.forEach.call(document.querySelectorAll('#lifecycles th[data-sort]'), function (th) {
    th.addEventListener('click', function () { sortBy(th.dataset.sort); });
  });
  apply();
})();
"""


def render(timeline) -> str:
    summary = timeline.summary()
    pilots = timeline.ordered_pilots()
    if len(pilots) > MAX_ROWS:  # a browser, and a reader, need a page of a sensible size
        hidden, pilots = len(pilots) - MAX_ROWS, pilots[:MAX_ROWS]
    else:
        hidden = 0
    lifecycles = [(p, p.lifecycle()) for p in pilots]
    # Each pilot's earliest and latest time: in seq order, a clock stepped back puts them anywhere.
    spans = [(min(at for _, _, at in steps), max(at for _, _, at in steps)) for _, steps in lifecycles if steps]
    t0 = min((a for a, _ in spans), default=0.0)
    t1 = max((b for _, b in spans), default=0.0)
    scale = WIDTH / (t1 - t0) if t1 > t0 else 0.0

    rows = []
    for p, steps in lifecycles:
        marks = []
        if len(steps) > 1:
            ats = [at for _, _, at in steps]
            x0, x1 = (min(ats) - t0) * scale, (max(ats) - t0) * scale
            marks.append('<line x1="%.1f" x2="%.1f" y1="11" y2="11" class="span"/>' % (x0, x1))
        for event, gap, at in steps:
            colour = ERROR if event["status"] == "error" else COLOURS.get(event["phase"], OTHER)
            tip = "%s %s%s: %s" % (
                event["time"],
                event["phase"],
                "" if gap is None else " (%+.1f s)" % gap,
                event["message"],
            )
            marks.append(
                '<circle cx="%.1f" cy="11" r="5" fill="%s" class="mark" data-phase="%s"><title>%s</title>'
                '</circle>' % ((at - t0) * scale, colour, escape(event["phase"]), escape(escape_controls(tip)))
            )
        start = steps[0][2] if steps else t0
        duration = steps[-1][2] - steps[0][2] if steps else 0.0
        site = escape_controls(p.site) or "-"
        attributes = {
            "pilot": p.pilot,
            "last": p.last_phase(),
            "site": site,
            "start": "%.6f" % start,
            "duration": "%.3f" % duration,
            "logs": str(p.log_lines),
        }
        data = " ".join('data-%s="%s"' % (k, escape(v)) for k, v in attributes.items())
        rows.append(
            '<tr class="pilot-row" %s><td class="pilot" title="%s">%s</td><td>%s</td><td>%s</td>'
            '<td class="n">%s</td><td class="n">%d</td><td><svg width="%d" height="%d">%s</svg></td></tr>'
            % (
                data,
                escape(p.pilot),
                escape(p.pilot[:36]),
                escape(site),
                escape(p.last_phase()),
                escape(duration_text(duration)),
                p.log_lines,
                WIDTH + 10,
                ROW,
                "".join(marks),
            )
        )

    def table(title, pairs):
        """A two-column table; a long one is folded (a day's run may list hundreds of pilots)."""
        pairs = list(pairs)
        body = "".join(
            "<tr><td>%s</td><td class='n'>%s</td></tr>" % (escape(escape_controls(str(k))), escape(str(v)))
            for k, v in pairs
        )
        table = "<table class='counts'>%s</table>" % (body or "<tr><td>none</td></tr>")
        if len(pairs) <= FOLD_ABOVE:
            return "<h2>%s</h2>%s" % (escape(title), table)
        return "<h2>%s</h2><details><summary>show all %d</summary>%s</details>" % (escape(title), len(pairs), table)

    def choices(element_id, label, values):
        options = "".join('<option value="%s">%s</option>' % (escape(v), escape(v)) for v in sorted(values))
        return '<label>%s <select id="%s"><option value="">all</option>%s</select></label>' % (
            label,
            element_id,
            options,
        )

    legend = " ".join(
        '<span><svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="%s"/></svg> %s</span>' % (c, escape(name))
        for name, c in list(COLOURS.items()) + [("error", ERROR), ("other", OTHER)]
    )
    head = "pilots: %d, events: %d (%d duplicate(s) dropped, %d message(s) not pilotlog events)" % (
        summary["pilots"],
        summary["events"],
        summary["duplicates_dropped"],
        summary["not_pilotlog_events"],
    )
    controls = (
        '<div class="controls">%s%s<label>pilot <input id="f-pilot" type="search" size="30"></label>'
        '<span><span id="shown">%d</span> of %d shown</span></div>'
        % (
            choices("f-phase", "last phase", {p.last_phase() for p in pilots}),
            choices("f-site", "site", {escape_controls(p.site) or "-" for p in pilots}),
            len(pilots),
            len(pilots),
        )
    )
    header = (
        '<thead><tr><th data-sort="pilot">pilot</th><th data-sort="site">site</th><th data-sort="last">last phase'
        '</th><th data-sort="duration">duration</th><th data-sort="logs">log lines</th>'
        '<th data-sort="start">from %s to %s</th></tr></thead>' % tuple(escape(t) for t in _span(pilots))
    )
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8"><title>pilot timeline</title><style>%s</style></head><body>'
            % STYLE,
            "<h1>Pilot timeline</h1><p>%s</p>" % escape(head),
            table("Last phase reached", summary["last_phase"].items()),
            table(
                "Booted but never matched (%d)" % len(summary["booted_never_matched"]),
                ((pid, "") for pid in summary["booted_never_matched"]),
            ),
            table("Failures by message", summary["failures_by_message"].items()),
            "<h2>Lifecycles</h2><p>%s</p>%s" % (legend, controls),
            '<table id="lifecycles">%s<tbody>%s</tbody></table>' % (header, "".join(rows)),
            (
                '<p id="cut">%d more pilots are not drawn (the page shows the first %d by start time; the summary above '
                'counts them all): give timeline fewer events, e.g. one site\'s, to see them.</p>' % (hidden, MAX_ROWS)
                if hidden
                else ""
            ),
            "<script>%s</script>" % SCRIPT,
            "</body></html>",
            "",
        ]
    )


def _span(pilots) -> tuple:
    """The first and the last time any of these pilots reported, RFC 3339 ("-" when none)."""
    if not pilots:
        return "-", "-"
    return min(p.first for p in pilots), max(max([s["time"] for s in p.steps] + [p.first]) for p in pilots)
