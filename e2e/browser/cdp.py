#!/usr/bin/env python3
"""Drives Debian's headless Chromium over the DevTools protocol for the
end-to-end tests (e2e/tests/dashboard.rs). No browser download: the
binary is /usr/bin/chromium (or $CHROMIUM).

Reads one JSON command per line on stdin, answers one JSON line on stdout:

  {"cmd": "goto", "url": U}                      -> {"ok": true}
  {"cmd": "wait", "js": EXPR, "timeout": S}      -> {"ok": bool, "value": last value}
  {"cmd": "eval", "js": EXPR}                    -> {"ok": true, "value": value}
  {"cmd": "screenshot", "path": P}               -> {"ok": true}
  {"cmd": "errors"}                              -> {"ok": true, "value": [console errors, exceptions]}
  {"cmd": "quit"}                                -> {"ok": true}, then exits

`wait` evaluates EXPR every 100 ms until it is truthy or S seconds passed.
Console errors, uncaught exceptions and failed loads are collected from the
moment the page target is attached.
"""

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import websocket


class Browser:
    def __init__(self):
        binary = os.environ.get("CHROMIUM", "/usr/bin/chromium")
        self.profile = tempfile.mkdtemp(prefix="switchyard-chromium-")
        self.process = subprocess.Popen(
            [binary, "--headless=new", "--no-sandbox", "--disable-gpu",
             "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-background-networking",
             "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
             "--window-size=1400,1000", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port = self._port()
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(t for t in targets if t.get("type") == "page")
        self.socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30)
        self.ids = itertools.count(1)
        self.errors = []
        self.loaded = False
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride",
                  width=1400, height=1000, deviceScaleFactor=1, mobile=False)

    def _port(self):
        active = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if os.path.exists(active):
                with open(active) as f:
                    first = f.readline().strip()
                if first:
                    return int(first)
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.process.returncode}")
            time.sleep(0.05)
        raise RuntimeError("chromium did not open its DevTools port in 30 s")

    def _event(self, message):
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            description = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"exception: {description}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            self.errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            self.errors.append(f"load failed: {params.get('errorText')}")
        elif method == "Page.loadEventFired":
            self.loaded = True

    def send(self, method, **params):
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self._event(message)

    def pump(self, seconds):
        """Reads events for up to `seconds`."""
        self.socket.settimeout(seconds)
        try:
            while True:
                self._event(json.loads(self.socket.recv()))
        except websocket.WebSocketTimeoutException:
            pass
        finally:
            self.socket.settimeout(30)

    def evaluate(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            return None
        return result.get("result", {}).get("value")

    def goto(self, url):
        self.loaded = False
        self.send("Page.navigate", url=url)
        deadline = time.monotonic() + 30
        while not self.loaded and time.monotonic() < deadline:
            self.pump(0.1)
        return self.loaded

    def wait(self, expression, timeout):
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return True, value
            self.pump(0.1)
        return False, value

    def screenshot(self, path):
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.socket.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


def main():
    browser = Browser()
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    try:
        for line in sys.stdin:
            command = json.loads(line)
            cmd = command["cmd"]
            try:
                if cmd == "goto":
                    reply = {"ok": browser.goto(command["url"])}
                elif cmd == "wait":
                    ok, value = browser.wait(command["js"], float(command.get("timeout", 10)))
                    reply = {"ok": ok, "value": value}
                elif cmd == "eval":
                    reply = {"ok": True, "value": browser.evaluate(command["js"])}
                elif cmd == "screenshot":
                    browser.screenshot(command["path"])
                    reply = {"ok": True}
                elif cmd == "errors":
                    browser.pump(0.2)
                    reply = {"ok": True, "value": browser.errors}
                elif cmd == "quit":
                    print(json.dumps({"ok": True}), flush=True)
                    return
                else:
                    reply = {"ok": False, "value": f"unknown command {cmd}"}
            except Exception as error:  # the test reads it and fails with it
                reply = {"ok": False, "value": f"{type(error).__name__}: {error}"}
            print(json.dumps(reply), flush=True)
    finally:
        browser.close()


if __name__ == "__main__":
    main()
