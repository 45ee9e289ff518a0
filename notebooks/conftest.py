"""nbval settings for the notebook series.

stderr is not compared: it carries warnings and progress bars whose text depends on the
machine (library versions, timings), while every result a reader sees goes to stdout or a
display output, which nbval compares strictly.
"""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
