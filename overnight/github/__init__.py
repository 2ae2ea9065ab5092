"""GitHub: webhook verification and triggers (the API's side), App and token authentication, and the REST
calls both the API and the worker make. Nothing here touches the database."""
