"""The engine: typed requests, tiers, geometry, backends. Imports nothing from service/, web/ or cli/."""

import logging

# Library convention: the engine logs its adjustments; the application decides whether to show them.
logging.getLogger("kontext_studio").addHandler(logging.NullHandler())
