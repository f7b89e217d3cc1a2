"""`tol publish`: the dataset card (card.py) and a resumable upload to the Hub (hub.py)."""
