"""HTTP: sending one request to Dintero and bounding it.

``transport`` sends a request and maps its errors, ``deadline`` gives every request a total
deadline (connect, send, headers and body), ``retry`` holds every retry layer's policy (its
docstring puts them on one page), and ``adaptive_limit`` decides how many requests an account
may have in flight. Nothing here knows tokens, streams or databases.
"""
