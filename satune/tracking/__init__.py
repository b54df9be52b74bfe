"""MLflow, and nothing else imports it: the server (`server.py`), the runs (`runs.py`), what the UI
shows (`views.py`), and every tag name (`tags.py`), all reachable as `tracking.<name>`.

Everything goes through `MlflowClient` with explicit run ids and an http:// tracking URI: trials run
in other processes (and directories) than the driver, and MLflow's default URI is a SQLite file in
the *current* directory.
"""

from satune.tracking.runs import *  # noqa: F403
from satune.tracking.server import *  # noqa: F403
from satune.tracking.tags import *  # noqa: F403
from satune.tracking.views import *  # noqa: F403
