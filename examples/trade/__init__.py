"""The example trading venue (docs/trade.md): ``tickwire serve --app examples.trade:app``.

book.py, accounts.py and venue.py are the pure core; commands.py what the journal
holds; service.py the server's app."""

from examples.trade.service import app, make_app

__all__ = ["app", "make_app"]
