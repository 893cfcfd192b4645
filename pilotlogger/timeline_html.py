"""``pilotlog timeline --html FILE``: one self-contained page (inline CSS and SVG, no scripts,
nothing fetched) with the summary and a per-pilot timeline chart on a common time axis.

Every text from the events is HTML-escaped: messages come from worker nodes.
"""

from html import escape

WIDTH = 900  # px of the time axis
ROW = 22
COLOURS = {"boot": "#4c78a8", "install": "#72b7b2", "power": "#54a24b", "os": "#9d755d", "match": "#2ca02c",
           "nomatch": "#f58518", "shutdown": "#7f7f7f"}
ERROR = "#d62728"


def render(timeline) -> str:
    summary = timeline.summary()
    pilots = timeline.ordered_pilots()
    spans = [(steps[0][2], steps[-1][2]) for steps in (p.lifecycle() for p in pilots) if steps]
    t0 = min((a for a, _ in spans), default=0.0)
    t1 = max((b for _, b in spans), default=0.0)
    scale = WIDTH / (t1 - t0) if t1 > t0 else 0.0

    rows = []
    for p in pilots:
        steps = p.lifecycle()
        marks = []
        if len(steps) > 1:
            x0, x1 = (steps[0][2] - t0) * scale, (steps[-1][2] - t0) * scale
            marks.append('<line x1="%.1f" x2="%.1f" y1="11" y2="11" class="span"/>' % (x0, x1))
        for event, gap, at in steps:
            colour = ERROR if event["status"] == "error" else COLOURS.get(event["phase"], "#b279a2")
            tip = "%s %s%s: %s" % (event["time"], event["phase"], "" if gap is None else " (+%.1f s)" % gap,
                                   event["message"])
            marks.append('<circle cx="%.1f" cy="11" r="5" fill="%s"><title>%s</title></circle>'
                         % ((at - t0) * scale, colour, escape(tip)))
        rows.append('<tr><td class="pilot" title="%s">%s</td><td>%s</td><td><svg width="%d" height="%d">%s</svg></td></tr>'
                    % (escape(p.pilot), escape(p.pilot[:36]), escape(p.last_phase()), WIDTH + 10, ROW, "".join(marks)))

    def table(title, pairs):
        body = "".join("<tr><td>%s</td><td class='n'>%s</td></tr>" % (escape(str(k)), escape(str(v))) for k, v in pairs)
        return "<h2>%s</h2><table class='counts'>%s</table>" % (escape(title), body or "<tr><td>none</td></tr>")

    legend = " ".join('<span><svg width="12" height="12"><circle cx="6" cy="6" r="5" fill="%s"/></svg> %s</span>'
                      % (c, escape(name)) for name, c in list(COLOURS.items()) + [("error", ERROR)])
    head = ("pilots: %d, events: %d (%d duplicate(s) dropped, %d message(s) not pilotlog events)"
            % (summary["pilots"], summary["events"], summary["duplicates_dropped"], summary["not_pilotlog_events"]))
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>pilot timeline</title><style>',
        "body{font:14px sans-serif;margin:1.5em}td{padding:1px 8px;white-space:nowrap}"
        ".pilot{font-family:monospace}.n{text-align:right}.span{stroke:#bbb;stroke-width:3}"
        "table.counts{border-collapse:collapse}table.counts td{border-bottom:1px solid #eee}",
        "</style></head><body>",
        "<h1>Pilot timeline</h1><p>%s</p>" % escape(head),
        table("Last phase reached", summary["last_phase"].items()),
        table("Booted but never matched (%d)" % len(summary["booted_never_matched"]),
              ((pid, "") for pid in summary["booted_never_matched"])),
        table("Failures by message", summary["failures_by_message"].items()),
        "<h2>Lifecycles</h2><p>%s</p>" % legend,
        "<table><tr><th>pilot</th><th>last phase</th><th>from %s to %s</th></tr>%s</table>" % (
            escape(_time(pilots, 0)), escape(_time(pilots, -1)), "".join(rows)),
        "</body></html>",
        "",
    ])


def _time(pilots, which: int) -> str:
    times = sorted(e["time"] for p in pilots for e in p.events)
    return times[which] if times else "-"
