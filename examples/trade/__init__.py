"""The example trading venue (docs/trade.md): `book` matches the orders of one symbol,
`accounts` holds cash and positions, `venue` puts the books behind the accounts'
pre-trade check. All of it is pure: the server wiring calls it and journals the commands.
"""
