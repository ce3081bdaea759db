"""`hub serve` and `hub demo` check their port before starting the services: a port held
only by the TIME-WAIT connections of a hub just stopped is free (uvicorn binds it with
SO_REUSEADDR); one another process listens on is not."""

from __future__ import annotations

import socket

from hub.cli import _port_free


def test_a_port_left_in_time_wait_is_free_and_a_listening_one_is_not() -> None:
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    conn, _ = server.accept()
    assert not _port_free("127.0.0.1", port)  # listening
    conn.close()  # the server side closes first: its end of the connection is in TIME-WAIT
    client.close()
    server.close()
    assert _port_free("127.0.0.1", port)
