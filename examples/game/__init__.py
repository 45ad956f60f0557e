"""The example real-time game (docs/game.md): ``tickwire serve --app examples.game:app``."""

from examples.game.service import app, make_app

__all__ = ["app", "make_app"]
