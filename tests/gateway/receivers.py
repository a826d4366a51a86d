"""A hospital's RIS (HL7 v2 over MLLP, on hl7apy's server) and EHR (a FHIR transaction endpoint over
HTTPS) for the gateway's messages: they keep what they get and answer as a site's systems do."""

from __future__ import annotations

import json
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from hl7apy.core import Message
from hl7apy.mllp import AbstractHandler, MLLPServer
from hl7apy.parser import parse_message

from gateway.result_messages import FhirDestination, MllpDestination
from ichseg.background_server import BackgroundServer
from tests.gateway.certificates import CertificateAuthority


class Ris:
    """An HL7 v2 receiver on hl7apy's MLLP server: keeps every ORU it gets, answers the codes queued
    in :attr:`answers` (then AA), each ACK naming the message's control id."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self.answers: list[str] = []
        ris = self

        class Handler(AbstractHandler):
            def reply(self) -> str:
                message = parse_message(self.incoming_message)
                ris.received.append(self.incoming_message)
                ack = Message("ACK", version="2.5.1")
                ack.msh.msh_3, ack.msh.msh_4 = "RIS", "STBRIGID"
                ack.msh.msh_9 = "ACK^R01^ACK"
                ack.msh.msh_10 = "ACK" + str(len(ris.received))
                ack.msh.msh_11, ack.msh.msh_12 = "P", "2.5.1"
                ack.msa.msa_1 = ris.answers.pop(0) if ris.answers else "AA"
                ack.msa.msa_2 = message.msh.msh_10.value
                return str(ack.to_mllp())  # the server writes the reply as it is: framed here

        self._serving = BackgroundServer(MLLPServer("127.0.0.1", 0, {"ORU^R01^ORU_R01": (Handler,)}), "ris").start()

    @property
    def destination(self) -> MllpDestination:
        return MllpDestination("127.0.0.1", self._serving.address[1], "RIS", "STBRIGID")

    def stop(self) -> None:
        self._serving.stop()


class Ehr:
    """A FHIR server's transaction endpoint over HTTPS: validates each Bundle with the R4(B) models,
    honours ``ifNoneExist`` on identifiers, and keeps what it created. With :attr:`lose_answers` it
    creates, then drops the connection without answering (the gateway never learns it worked)."""

    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority(folder / "ca")
        certificate, key = self.ca.issue("ehr")
        self.created: list[dict[str, Any]] = []
        self.lose_answers = 0
        ehr = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                bundle = Bundle.model_validate_json(body)
                statuses = []
                for entry in json.loads(body)["entry"]:
                    search = entry["request"].get("ifNoneExist", "")
                    existing = [c for c in ehr.created if c["search"] == search and search]
                    if not existing:
                        ehr.created.append({"search": search, "resource": entry["resource"]})
                    statuses.append("200 OK" if existing else "201 Created")
                assert bundle.type == "transaction"
                if ehr.lose_answers:
                    ehr.lose_answers -= 1
                    self.close_connection = True
                    return  # no response at all
                answer = {
                    "resourceType": "Bundle",
                    "type": "transaction-response",
                    "entry": [{"response": {"status": status}} for status in statuses],
                }
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._serving = BackgroundServer(server, "ehr").start()

    @property
    def destination(self) -> FhirDestination:
        return FhirDestination(f"https://127.0.0.1:{self._serving.address[1]}/fhir")

    def kinds(self) -> list[str]:
        return [c["resource"]["resourceType"] for c in self.created]

    def stop(self) -> None:
        self._serving.stop()
