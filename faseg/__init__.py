"""FASeg serving: the `faseg` import package.

Sub-packages map to top-level folders of the repository (see pyproject.toml):
``faseg.model`` → ``model/``, ``faseg.export`` → ``export/``, ``faseg.service`` → ``service/``.
Data flows one way: service → export → model.
"""

__version__ = "0.1.0"
