"""Panel builders shared by the dashboards (monitoring/dashboards.py): one look, one data source, one rate window."""

from __future__ import annotations

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="prometheus")  # the provisioned data source's uid
RATE = "$__rate_interval"
CLIENT_ROUTES = 'route=~"/v1/.*"'
TOKENS = "suffix: tok/s"


# -- queries -------------------------------------------------------------------------------------------
def quantile(q: float, histogram: str, selector: str = "", by: str = "") -> str:
    """The q-quantile of a histogram over the rate window, kept apart per `by` labels."""
    labels = f"le, {by}" if by else "le"
    return f"histogram_quantile({q}, sum by ({labels}) (rate({histogram}_bucket{{{selector}}}[{RATE}])))"


def percentiles(histogram: str, selector: str = "", by: str = "") -> list[tuple[str, str]]:
    prefix = "{{" + by + "}} " if by else ""
    return [(quantile(q, histogram, selector, by), f"{prefix}p{round(q * 100)}") for q in (0.5, 0.95, 0.99)]


def _target(expr: str, legend: str, ref: str = "A") -> prometheus.Dataquery:
    return prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(DATASOURCE)


# -- panels --------------------------------------------------------------------------------------------
def graph(title: str, unit: str, queries: list[tuple[str, str]], description: str, width: int = 12) -> timeseries.Panel:
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(width)
        .height(8)
        .fill_opacity(10)
        .legend(cb.VizLegendOptions().display_mode(cm.LegendDisplayMode.LIST).placement(cm.LegendPlacement.BOTTOM))
    )
    for i, (expr, legend) in enumerate(queries):
        panel = panel.with_target(_target(expr, legend, chr(ord("A") + i)))
    return panel


def single(title: str, unit: str, expr: str, description: str, width: int = 4) -> stat.Panel:
    return (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(width)
        .height(4)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
        .with_target(_target(expr, title))
    )


def variable(name: str, label: str, query: str) -> db.QueryVariable:
    """Multi-select with All, so every view also compares the models or workers side by side."""
    return (
        db.QueryVariable(name)
        .label(label)
        .query(query)
        .datasource(DATASOURCE)
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def base(uid: str, title: str, description: str) -> db.Dashboard:
    links = db.DashboardLink("Inference").type(dm.DashboardLinkType.DASHBOARDS).tags(["inference"])
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["inference"])
        .editable()
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .link(links.as_dropdown(True).include_vars(True).keep_time(True))
    )
