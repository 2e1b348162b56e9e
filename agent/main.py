"""Running the agent: ``run(config)`` wires runtime, gateway and loop, and handles signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from aiohttp import web

from agent.config import AgentConfig
from agent.counters import FunctionCounters
from agent.datadir import DataDirLock, make_private_dir
from agent.gateway import make_gateway
from agent.loop import Agent
from agent.push import PushListener
from agent.runtime.base import Limits, Runtime
from edgesync.errors import EdgesyncError
from edgesync.http_server import EnvelopeAppRunner
from edgesync.listen import bind_tcp

log = logging.getLogger("edgesync.agent")


def limits_of(config: AgentConfig) -> Limits:
    return Limits(config.function_timeout_seconds, config.function_memory_mb * 1024 * 1024)


def runtime_for(config: AgentConfig) -> Runtime:
    """The runtime ``config`` asks for, told the node's limits: a module declaring more
    memory than they allow is then refused at deploy, before the release transaction."""
    from agent.runtime import open_runtime

    return open_runtime(config.runtime, config.data_dir, limits_of(config))


async def serve(config: AgentConfig) -> int:
    """Run until SIGTERM/SIGINT (or one sync with ``--once``); return the exit code.

    Order matters for a start that fails: the gateway's port is bound, then the data
    dir locked, before anything is written, so a busy port or a second agent leaves
    no trace (and spends no enrollment-token use on an enrolment that cannot run).
    """
    address = None if config.once else config.gateway_address
    listeners = bind_tcp(*address, what="serve the gateway") if address else []
    lock = DataDirLock(config.data_dir)
    try:
        make_private_dir(config.data_dir)
        lock.acquire()
        runtime = await asyncio.to_thread(runtime_for, config)
        return await _serve(config, Agent(config, runtime), listeners)
    finally:
        for sock in listeners:
            sock.close()
        lock.release()


async def _serve(config: AgentConfig, agent: Agent, listeners: list[socket.socket]) -> int:
    runtime = agent.runtime
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.stop)
    runner: web.AppRunner | None = None
    push: PushListener | None = None
    try:
        await agent.open()
        log.info("node %s on runtime %s", agent.node_id, runtime.name)
        if config.once:
            outcome = await agent.sync_once()
            if not outcome.ok:
                # Rendered once, like every CLI error, by edgesync.cli (exit 1).
                raise outcome.error or EdgesyncError(
                    f"the sync ended {outcome.kind}", code="SYNC_FAILED"
                )
            return 0
        push = push_listener(config, agent)
        if push is not None:
            push.start()
        if listeners:
            gateway = make_gateway(runtime, limits_of(config), FunctionCounters(agent))
            runner = EnvelopeAppRunner(gateway, access_log=None)  # envelopes, read deadlines
            await runner.setup()
            for sock in listeners:
                await web.SockSite(runner, sock).start()
            host, port = listeners[0].getsockname()[:2]
            log.info("gateway on http://%s:%s", f"[{host}]" if ":" in host else host, port)
        await agent.run()
        return 0
    finally:
        if push is not None:
            await push.stop()
        if runner is not None:
            await runner.cleanup()
        await agent.close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def push_listener(config: AgentConfig, agent: Agent) -> PushListener | None:
    """The MQTT listener the registration (or ``--mqtt-url``) names, wired to ``agent``."""
    from edgesync.mqtt import node_topics

    credentials = agent.credentials
    if not config.mqtt or credentials is None:
        return None
    told = credentials.mqtt or {}
    url = config.mqtt_url or told.get("url")
    if not url:
        return None
    topics = told.get("topics")
    if not topics or not all(isinstance(topic, str) for topic in topics):
        topics = node_topics(credentials.node_id)
    try:
        listener = PushListener(
            str(url),
            list(topics),
            credentials.node_id,
            token=lambda: credentials.token,
            nudge=agent.wake.set,
            ca_file=config.ca_file,
        )
    except ValueError as exc:  # e.g. a scheme this agent does not speak: poll only
        log.warning("MQTT push off: %s", exc)
        return None
    agent.token_listeners.append(listener.credentials_changed)
    log.info("MQTT push from %s", listener.address.public_url)
    return listener


def run(config: AgentConfig) -> int:
    os.umask(0o077)  # whatever the agent (or a library under it) creates is the node's own
    return asyncio.run(serve(config))
