"""The application side: native App, WSGI adapter, static files, upload store, broadcast, demo."""
