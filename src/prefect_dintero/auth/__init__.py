"""Auth: the API client's credentials and the tokens they buy.

``client_credentials`` is the configuration (account, client id, secret, URLs),
``grants`` the two token requests (client credentials, the OIDC code exchange and refresh),
``tokens`` the token itself, ``store`` where tokens live between requests and how a renewal is
shared between processes, ``provider`` hands out a valid token renewing it once per credential,
``httpx_auth`` puts it on requests, ``oidc_login`` builds a user's login URL. Built on
:mod:`prefect_dintero.http`; nothing here knows streams or databases.
"""
