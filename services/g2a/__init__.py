"""G2A Export API client: typed errors, shared Redis rate limit, one retry policy."""

from services.g2a.client import G2AClient, auth_header, make_client, make_http
from services.g2a.errors import (
    G2AAuthError,
    G2ABadRequest,
    G2AError,
    G2AInsufficientFunds,
    G2AKeyAlreadyDownloaded,
    G2AOrderNotFound,
    G2APaymentNotReady,
    G2AProtocolError,
    G2ARateLimited,
    G2AUnavailable,
)
from services.g2a.models import CreatedOrder, G2AProduct, OrderDetails, Payment, ProductPage
from services.g2a.rate_limit import RateLimiter, RateLimitTimeout

__all__ = [
    "CreatedOrder",
    "G2AAuthError",
    "G2ABadRequest",
    "G2AClient",
    "G2AError",
    "G2AInsufficientFunds",
    "G2AKeyAlreadyDownloaded",
    "G2AOrderNotFound",
    "G2APaymentNotReady",
    "G2AProduct",
    "G2AProtocolError",
    "G2ARateLimited",
    "G2AUnavailable",
    "OrderDetails",
    "Payment",
    "ProductPage",
    "RateLimitTimeout",
    "RateLimiter",
    "auth_header",
    "make_client",
    "make_http",
]
