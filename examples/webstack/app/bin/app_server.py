#!/usr/bin/python3
"""A small key-value web service on Redis, with the Python standard library only.

  GET  /            "<greeting> <unit>"        which unit answered (for load balancing)
  GET  /kv/<key>    the value, or 404
  PUT  /kv/<key>    stores the request body (POST works too)
  DELETE /kv/<key>  deletes it
  GET  /healthz     "ok" when Redis answers PING

Settings come from a JSON file (argument 1) that the app definition's hook writes:
{"unit", "greeting", "host", "port", "redis": {"host", "port", "password"}}.
Redis is spoken over a plain socket in RESP, one connection per request.
"""

import json
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RedisError(Exception):
    pass


class Redis:
    def __init__(self, host, port, password, timeout=5.0):
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.reader = self.sock.makefile("rb")
        if password:
            self.command("AUTH", password)

    def close(self):
        self.reader.close()
        self.sock.close()

    def command(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for arg in args:
            data = arg if isinstance(arg, bytes) else str(arg).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        self.sock.sendall(b"".join(out))
        return self._reply()

    def _reply(self):
        line = self.reader.readline()
        if not line.endswith(b"\r\n"):
            raise RedisError("connection closed")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.reader.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._reply() for _ in range(n)]
        raise RedisError("unexpected reply %r" % line)


class Handler(BaseHTTPRequestHandler):
    settings = {}
    protocol_version = "HTTP/1.1"

    def _send(self, code, body, content_type="text/plain; charset=utf-8"):
        data = body if isinstance(body, bytes) else body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Parley-Unit", self.settings["unit"])
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _redis(self, *args):
        r = self.settings["redis"]
        conn = Redis(r["host"], r["port"], r.get("password", ""))
        try:
            return conn.command(*args)
        finally:
            conn.close()

    def _key(self):
        if not self.path.startswith("/kv/") or len(self.path) <= 4:
            return None
        return self.path[4:]

    def _handle(self, method):
        try:
            if method == "GET" and self.path == "/":
                return self._send(200, "%s %s\n" % (self.settings["greeting"], self.settings["unit"]))
            if method == "GET" and self.path == "/healthz":
                return self._send(200, "ok\n" if self._redis("PING") == "PONG" else "no\n")
            key = self._key()
            if key is None:
                return self._send(404, "not found\n")
            if method == "GET":
                value = self._redis("GET", key)
                return self._send(404, "no such key\n") if value is None else self._send(200, value, "application/octet-stream")
            if method in ("PUT", "POST"):
                length = int(self.headers.get("Content-Length") or 0)
                self._redis("SET", key, self.rfile.read(length))
                return self._send(200, "stored %s\n" % key)
            if method == "DELETE":
                return self._send(200, "deleted %d\n" % self._redis("DEL", key))
            return self._send(405, "method not allowed\n")
        except (OSError, RedisError) as e:
            return self._send(503, "redis: %s\n" % e)

    def do_GET(self):
        self._handle("GET")

    def do_HEAD(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_POST(self):
        self._handle("POST")

    def do_DELETE(self):
        self._handle("DELETE")

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.settings["unit"], fmt % args))


def main():
    with open(sys.argv[1]) as f:
        Handler.settings = json.load(f)
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer((Handler.settings["host"], int(Handler.settings["port"])), Handler)
    sys.stderr.write("%s serving on %s:%s\n" % (Handler.settings["unit"], Handler.settings["host"], Handler.settings["port"]))
    sys.stderr.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
