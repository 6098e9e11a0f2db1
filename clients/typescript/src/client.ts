/**
 * A typed client of stackone-connect's `ConnectService` over gRPC (HTTP/2), with the
 * caller's bearer token, TLS and mTLS configured as the CLI configures them.
 */
import type * as http2 from "node:http2";

import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import {
  ConnectService,
  ListAccountsRequestSchema,
  type Account,
  type CreateSessionRequestSchema,
  type DeleteAccountRequestSchema,
} from "../gen/stackone_connect/v1/stackone_connect_pb.js";

/** Every RPC of the service as a method: `client.createSession({...})`, and so on. */
export type ConnectServiceClient = Client<typeof ConnectService>;

export interface ConnectOptions {
  /** `host:port` of the gRPC server, as the CLI's `--target` (e.g. `127.0.0.1:50051`). */
  target: string;
  /** A bearer token of a configured client (`STACKONE_CONNECT_CLIENTS_FILE`). */
  token?: string;
  /** TLS: the CA (PEM) that signed the server's certificate. Plaintext when unset. */
  ca?: string | Buffer;
  /** mTLS: this client's certificate and key (PEM); needs `ca`. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Deadline of each unary call in milliseconds (streams have none). Default 30 s. */
  timeoutMs?: number;
}

/** A client of the service and the HTTP/2 connection it uses. */
export interface ServiceConnection {
  client: ConnectServiceClient;
  /** Closes the connection (ending its calls and streams) so that the process can exit. */
  close(): void;
}

/** A client of the service at `options.target`; one HTTP/2 connection, made on first use. */
export function connectService(options: ConnectOptions): ServiceConnection {
  const interceptors: Interceptor[] = [];
  const token = options.token;
  if (token !== undefined) {
    interceptors.push((next) => (request) => {
      request.header.set("authorization", `Bearer ${token}`);
      return next(request);
    });
  }
  const tls = options.ca !== undefined;
  const nodeOptions: http2.SecureClientSessionOptions = {};
  if (options.ca !== undefined) nodeOptions.ca = options.ca;
  if (options.cert !== undefined) nodeOptions.cert = options.cert;
  if (options.key !== undefined) nodeOptions.key = options.key;
  const baseUrl = `${tls ? "https" : "http"}://${options.target}`;
  // Pings find a server that vanished without closing the connection; the server allows
  // one every 10 s at most (service/rpc/server.py).
  const ping = { pingIntervalMs: 30_000, pingTimeoutMs: 10_000 };
  const sessionManager = new Http2SessionManager(baseUrl, ping, nodeOptions);
  const transport = createGrpcTransport({
    baseUrl,
    interceptors,
    sessionManager,
    defaultTimeoutMs: options.timeoutMs ?? 30_000,
  });
  const client = withRetries(createClient(ConnectService, transport));
  return { client, close: () => sessionManager.abort() };
}

/** Failures after which the service may not have answered: a retry under the same
 * `requestId` gets the first call's answer (AIP-155), never a second change. */
const RETRIED_CODES = new Set([Code.Unavailable, Code.DeadlineExceeded]);
const RETRY_ATTEMPTS = 4;
const RETRY_FIRST_WAIT_MS = 200; // doubling

/** Asks `call` with one request id (the caller's, else a new UUID) until it answers, or
 * fails otherwise than `RETRIED_CODES`, or `RETRY_ATTEMPTS` are spent. */
async function retried<T>(call: () => Promise<T>): Promise<T> {
  let wait = RETRY_FIRST_WAIT_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (error) {
      const code = ConnectError.from(error).code;
      if (attempt >= RETRY_ATTEMPTS || !RETRIED_CODES.has(code)) throw error;
    }
    await sleep(wait);
    wait *= 2;
  }
}

/** `client` with CreateSession and DeleteAccount made safe to retry, and retried. */
function withRetries(client: ConnectServiceClient): ConnectServiceClient {
  const { createSession, deleteAccount } = client;
  return {
    ...client,
    createSession: (
      request: MessageInitShape<typeof CreateSessionRequestSchema>,
      options?: CallOptions,
    ) => {
      const requestId = request.requestId || randomUUID();
      return retried(() => createSession({ ...request, requestId }, options));
    },
    deleteAccount: (
      request: MessageInitShape<typeof DeleteAccountRequestSchema>,
      options?: CallOptions,
    ) => {
      const requestId = request.requestId || randomUUID();
      return retried(() => deleteAccount({ ...request, requestId }, options));
    },
  };
}

/** Every account of a listing, page after page (`page_token` handled here). */
export async function* listAllAccounts(
  client: ConnectServiceClient,
  request: MessageInitShape<typeof ListAccountsRequestSchema> = {},
): AsyncGenerator<Account> {
  const page = create(ListAccountsRequestSchema, request);
  do {
    const answer = await client.listAccounts(page);
    yield* answer.accounts;
    page.pageToken = answer.nextPageToken;
  } while (page.pageToken !== "");
}
