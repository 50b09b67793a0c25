"""Orders: buying, the forward-only status machine, G2A fulfilment and the status poller."""
