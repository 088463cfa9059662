"""The baseline: the smallest honest script a user would write instead of lkbridge.

A paho client and one `livekit.rtc.Room` per session, wired directly together, with no lkbridge
code: text published on `{base}/{id}/send` goes to the agent on `lk.chat`, and every
`lk.transcription` chunk goes out on `{base}/{id}/message` as JSON with the text so far.
It mints its own tokens (dispatching the agent) with livekit-api, as lkbridge's minted tokens do.

What it leaves out is what lkbridge adds: persisted history, state/error/availability topics,
Home Assistant discovery, idempotency ids, per-session ordering, holding text until the agent
is there, request/response, reconnection and supervision.

The benchmark runs it as its own process, like the daemon:
    LIVEKIT_URL=ws://… LIVEKIT_API_KEY=… LIVEKIT_API_SECRET=… \
        python bench/baseline.py --port 1883 --base bench --agent NAME --sessions 10
It sends READY=1 to $NOTIFY_SOCKET at the point where lkbridge does (MQTT started, rooms
launched), so start-up is timed the same way for both; without NOTIFY_SOCKET it says nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import uuid
from datetime import UTC, datetime

import paho.mqtt.client as mqtt
from livekit import api, rtc


def sd_notify(text: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET", "")
    if address.startswith("/"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(text.encode(), address)


def room_token(session_id: str, agent_name: str) -> str:
    room = f"baseline-{session_id}-{uuid.uuid4().hex[:8]}"
    token = (
        api.AccessToken(os.environ["LIVEKIT_API_KEY"], os.environ["LIVEKIT_API_SECRET"])
        .with_identity(f"baseline-{session_id}")
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .with_room_config(
            api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent_name)])
        )
    )
    return token.to_jwt()


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    session_ids = [f"s{i:02d}" for i in range(args.sessions)]
    rooms = {sid: rtc.Room() for sid in session_ids}
    tasks: set[asyncio.Task[None]] = set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"baseline-{os.getpid()}")

    def on_connect(client: mqtt.Client, userdata: object, flags: object, rc: object,
                   props: object = None) -> None:  # fmt: skip
        client.subscribe(f"{args.base}/+/send", qos=1)

    def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        room = rooms.get(msg.topic.split("/")[-2])
        if room is not None and not msg.retain:
            text = msg.payload.decode()
            send = room.local_participant.send_text(text, topic="lk.chat")
            asyncio.run_coroutine_threadsafe(send, loop)

    async def forward(session_id: str, reader: rtc.TextStreamReader) -> None:
        info = reader.info
        event = {
            "id": info.attributes.get("lk.segment_id") or info.stream_id,
            "timestamp": datetime.now(UTC).isoformat(),
            "type": "agent_transcript",
            "text": "",
            "final": False,
            "session": session_id,
        }
        topic = f"{args.base}/{session_id}/message"
        async for chunk in reader:
            event["text"] += chunk
            client.publish(topic, json.dumps(event), qos=1)
        event["final"] = True
        client.publish(topic, json.dumps(event), qos=1)

    def on_transcription(session_id: str, reader: rtc.TextStreamReader, sender: str) -> None:
        task = loop.create_task(forward(session_id, reader))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    client.on_connect = on_connect
    client.on_message = on_message
    client.connect(args.host, args.port)
    client.loop_start()

    for sid, room in rooms.items():
        room.register_text_stream_handler(
            "lk.transcription", lambda reader, sender, sid=sid: on_transcription(sid, reader, sender)
        )
    url = os.environ["LIVEKIT_URL"]
    connects = [
        loop.create_task(room.connect(url, room_token(sid, args.agent)))
        for sid, room in rooms.items()
    ]
    sd_notify("READY=1")
    await stop.wait()
    for task in connects:
        task.cancel()
    await asyncio.gather(*(room.disconnect() for room in rooms.values()), return_exceptions=True)
    client.disconnect()
    client.loop_stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base", required=True, help="base topic")
    parser.add_argument("--agent", required=True, help="agent name to dispatch")
    parser.add_argument("--sessions", type=int, default=1)
    asyncio.run(main(parser.parse_args()))
