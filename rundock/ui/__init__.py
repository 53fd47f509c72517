"""The web UI: runs, metrics and logs in a browser, with no internet and no build step.

Pages are rendered on the server (``html`` holds the one escaping path) with a little vanilla JavaScript and
the vendored uPlot for charts. The same router serves ``rundock ui`` over a local history (``app.local_app``)
and the team server's ``/ui`` (``app.mount_team_ui``); ``auth`` says who may see what.
"""
