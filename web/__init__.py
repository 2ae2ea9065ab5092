"""The web app: task list, live activity, diff review with inline comments and follow-ups, served by the API
(``web.app.install_web``); pages rendered on the server, a small script layer, nothing from another host."""
