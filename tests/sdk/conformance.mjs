// Checks the StackOne emulator and our Python client against StackOne's own SDK
// (@stackone/stackone-client-ts, pinned in package.json), whose zod schemas are generated
// from StackOne's OpenAPI description.
//
//   node conformance.mjs responses BASE_URL API_KEY
//       drives the emulator with the SDK itself: every answer must parse with the SDK's
//       schemas, carry no field they do not define, and (for sessions) every field they do.
//   node conformance.mjs requests BASE_URL API_KEY
//       reads the requests the emulator recorded (GET /emulator/requests) and checks those
//       our client sent (user agent stackone-connect/...) with the SDK's schemas: the same
//       fields, types and encodings the SDK would send.
//
// Prints one line per check ("ok - ..." / "not ok - ...") and a closing count; exits 1 if
// any check failed.
import { StackOne } from "@stackone/stackone-client-ts";
import { HTTPClient } from "@stackone/stackone-client-ts/lib/http.js";
import { encodeFormQuery } from "@stackone/stackone-client-ts/lib/encodings.js";
import * as shared from "@stackone/stackone-client-ts/sdk/models/shared/index.js";
import * as errors from "@stackone/stackone-client-ts/sdk/models/errors/index.js";
import * as operations from "@stackone/stackone-client-ts/sdk/models/operations/index.js";
import { isDeepStrictEqual } from "node:util";

const [mode, baseURL, apiKey] = process.argv.slice(2);
const CLIENT_AGENT = "stackone-connect/";
const CATEGORIES = Object.values(shared.ConnectSessionCreateCategories);
let passed = 0;
let failed = 0;

function ok(name) {
  passed += 1;
  console.log(`ok - ${name}`);
}

function notOk(name, why) {
  failed += 1;
  console.log(`not ok - ${name}: ${why}`);
}

async function check(name, body) {
  try {
    await body();
    ok(name);
  } catch (error) {
    notOk(name, describe(error));
  }
}

function describe(error) {
  if (error?.cause?.issues) {
    return `${error.message}: ${JSON.stringify(error.cause.issues)}`;
  }
  return error?.stack?.split("\n").slice(0, 2).join(" ") ?? String(error);
}

function expect(condition, message) {
  if (!condition) {
    throw new Error(message);
  }
}

function equal(actual, expected, what) {
  expect(
    isDeepStrictEqual(actual, expected),
    `${what}: ${JSON.stringify(actual)} != ${JSON.stringify(expected)}`,
  );
}

// --- zod schemas as field lists -------------------------------------------------------

/** The object schema under effects, nullables, optionals, defaults and lazies, or null. */
function objectOf(schema) {
  let current = schema;
  for (let i = 0; i < 20 && current; i += 1) {
    const def = current._def;
    switch (def.typeName) {
      case "ZodObject":
        return current;
      case "ZodEffects":
        current = def.schema;
        break;
      case "ZodNullable":
      case "ZodOptional":
      case "ZodDefault":
        current = def.innerType;
        break;
      case "ZodLazy":
        current = def.getter();
        break;
      case "ZodArray":
        current = def.type;
        break;
      default:
        return null;
    }
  }
  return null;
}

function fieldsOf(schema) {
  return Object.keys(objectOf(schema).shape);
}

/** Problems with `value` against `schema`: fields it does not define, at any depth.
 * An object schema with no fields (metadata, credentials) is an open object. */
function unknownFields(schema, value, path = "") {
  const object = objectOf(schema);
  if (object === null || value === null || typeof value !== "object") {
    return [];
  }
  if (Array.isArray(value)) {
    return value.flatMap((item, i) => unknownFields(schema, item, `${path}[${i}]`));
  }
  const shape = object.shape;
  if (Object.keys(shape).length === 0) {
    return [];
  }
  return Object.entries(value).flatMap(([key, item]) =>
    key in shape
      ? unknownFields(shape[key], item, `${path}.${key}`)
      : [`${path}.${key} is not a field of StackOne's schema`],
  );
}

function conforms(schema, value, what) {
  const parsed = schema.safeParse(value);
  expect(parsed.success, `${what} does not parse: ${JSON.stringify(parsed.error?.issues)}`);
  const extra = unknownFields(schema, value);
  expect(extra.length === 0, `${what}: ${extra.join("; ")}`);
  return parsed.data;
}

function complete(schema, value, what, mayLack = []) {
  const missing = fieldsOf(schema).filter((key) => !(key in value) && !mayLack.includes(key));
  expect(missing.length === 0, `${what} lacks ${missing.join(", ")}`);
}

// --- responses: the SDK against the emulator ------------------------------------------

async function emulator(method, path, body) {
  const response = await fetch(new URL(path, baseURL), {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  expect(response.ok, `${method} ${path} answered ${response.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

function sdkClient(key) {
  const answers = [];
  const httpClient = new HTTPClient();
  httpClient.addHook("response", async (response) => {
    answers.push({ status: response.status, text: await response.clone().text() });
  });
  const sdk = new StackOne({
    serverURL: baseURL,
    security: { username: key, password: "" },
    httpClient,
    retryConfig: { strategy: "none" },
  });
  return { sdk, lastAnswer: () => JSON.parse(answers.at(-1).text) };
}

/** Runs `call`, which must fail with StackOne's error `errorClass` for HTTP `status`, its
 * body in the error's schema. */
async function refused(call, errorClass, status) {
  try {
    await call();
  } catch (error) {
    expect(
      error instanceof errorClass,
      `expected ${errorClass.name}, got ${error?.constructor?.name}: ${describe(error)}`,
    );
    equal([error.statusCode, error.data$.statusCode], [status, status], "statusCode");
    expect(typeof error.data$.message === "string", "message");
    expect(error.timestamp instanceof Date && !isNaN(error.timestamp), "timestamp");
    const schema = errors[`${errorClass.name}$inboundSchema`];
    const extra = unknownFields(schema, JSON.parse(error.body));
    expect(extra.length === 0, `the error body: ${extra.join("; ")}`);
    return error;
  }
  throw new Error(`expected ${errorClass.name}, the call succeeded`);
}

async function responses() {
  const { sdk, lastAnswer } = sdkClient(apiKey);
  const fullSession = {
    originOwnerId: "tenant-5521",
    originOwnerName: "Bluefin Logistics",
    originUsername: "it-admin@bluefin.example",
    provider: "hibob",
    providerVersion: "2",
    categories: CATEGORIES,
    expiresIn: 600,
    label: "Bluefin HR",
    metadata: { plan: "growth" },
    multiple: false,
    type: "test",
  };
  let session;
  await check("POST /connect_sessions with every field: ConnectSessionTokenAuthLink", async () => {
    const created = await sdk.connectSessions.createConnectSession(fullSession);
    session = created.connectSessionTokenAuthLink;
    expect(session, "no session in the answer");
    const raw = lastAnswer();
    conforms(shared.ConnectSessionTokenAuthLink$inboundSchema, raw, "the session");
    complete(shared.ConnectSessionTokenAuthLink$inboundSchema, raw, "the session");
    equal(session.type, "test", "type");
    equal(session.categories, CATEGORIES, "categories");
    equal(session.label, "Bluefin HR", "label");
    equal(session.originUsername, "it-admin@bluefin.example", "origin_username");
    expect(session.authLinkUrl.includes(session.token), "auth_link_url carries the token");
  });
  await check("POST /connect_sessions/authenticate: ConnectSession", async () => {
    const found = await sdk.connectSessions.authenticateConnectSession({ token: session.token });
    const raw = lastAnswer();
    conforms(shared.ConnectSession$inboundSchema, raw, "the session");
    complete(shared.ConnectSession$inboundSchema, raw, "the session");
    equal(found.connectSession.id, session.id, "id");
  });

  let account;
  await check("GET /accounts/{id}: LinkedAccount", async () => {
    const linked = await emulator("POST", "/emulator/link", { token: session.token });
    account = (await sdk.accounts.getAccount({ id: linked.id })).linkedAccount;
    conforms(shared.LinkedAccount$inboundSchema, lastAnswer(), "the account");
    // Credentials and setup information are the provider's; the emulator has none.
    complete(shared.LinkedAccount$inboundSchema, lastAnswer(), "the account", [
      "credentials",
      "setup_information",
    ]);
    equal([account.status, account.type, account.provider], ["active", "test", "hibob"], "state");
  });
  await check("an account in error: status_reasons with code, description, timestamp", async () => {
    await emulator("PATCH", `/emulator/accounts/${account.id}`, {
      status: "error",
      status_reasons: [{ code: "token_refresh_failed", description: "revoked" }],
    });
    const broken = (await sdk.accounts.getAccount({ id: account.id })).linkedAccount;
    conforms(shared.LinkedAccount$inboundSchema, lastAnswer(), "the account");
    equal(broken.status, "error", "status");
    equal(broken.statusReasons[0].code, "token_refresh_failed", "code");
    expect(broken.statusReasons[0].timestamp instanceof Date, "timestamp is a date");
  });
  await check("a re-connect session is bound to its account and brings it back", async () => {
    const again = await sdk.connectSessions.createConnectSession({
      originOwnerId: "tenant-5521",
      originOwnerName: "Bluefin Logistics",
      accountId: account.id,
    });
    conforms(shared.ConnectSessionTokenAuthLink$inboundSchema, lastAnswer(), "the session");
    equal(again.connectSessionTokenAuthLink.accountId, account.id, "account_id");
    const token = again.connectSessionTokenAuthLink.token;
    const relinked = await emulator("POST", "/emulator/link", { token });
    equal(relinked.id, account.id, "the same account");
    const back = (await sdk.accounts.getAccount({ id: account.id })).linkedAccount;
    equal([back.status, back.statusReasons ?? null], ["active", null], "status, reasons");
  });

  await listings(sdk, lastAnswer);

  await check("DELETE /accounts/{id}: LinkedAccount, then 404", async () => {
    const gone = (await sdk.accounts.deleteAccount({ id: account.id })).linkedAccount;
    conforms(shared.LinkedAccount$inboundSchema, lastAnswer(), "the account");
    equal(gone.status, "inactive", "status");
    await refused(() => sdk.accounts.getAccount({ id: account.id }), errors.NotFoundResponse, 404);
  });
  await errorBodies(sdk);
}

async function listings(sdk, lastAnswer) {
  const made = [];
  for (const [owner, provider, status] of [
    ["list-a", "hibob", "active"],
    ["list-a", "personio", "error"],
    ["list-b", "hibob", "active"],
    ["list-b", "workday", "inactive"],
    ["list-c", "hibob", "active"],
  ]) {
    made.push(
      await emulator("POST", "/emulator/accounts", {
        origin_owner_id: owner,
        origin_owner_name: owner,
        provider,
        status,
      }),
    );
  }
  const ids = (accounts) => accounts.map((a) => a.id).sort();
  const mine = made.map((a) => a.id);
  async function list(request, what) {
    const page = await sdk.accounts.listLinkedAccounts(request);
    const answer = lastAnswer();
    expect(Array.isArray(answer), `${what}: the answer is a JSON array`);
    answer.forEach((item, i) => conforms(shared.LinkedAccount$inboundSchema, item, `${what}[${i}]`));
    return page.classes;
  }
  await check("GET /accounts filters: owners, providers, ids, statuses (OR within, AND across)", async () => {
    const owners = await list({ originOwnerIds: ["list-a", "list-b"], pageSize: 100 }, "by owners");
    equal(ids(owners), ids(made.slice(0, 4)), "origin_owner_ids");
    const hibob = await list({ providers: ["hibob"], originOwnerIds: ["list-a", "list-b", "list-c"], pageSize: 100 }, "by providers");
    equal(ids(hibob), ids([made[0], made[2], made[4]]), "providers AND owners");
    const chosen = await list({ accountIds: [mine[1], mine[3]], pageSize: 100 }, "by ids");
    equal(ids(chosen), [mine[1], mine[3]].sort(), "account_ids");
    const broken = await list({ status: ["error", "inactive"], accountIds: mine, pageSize: 100 }, "by status");
    equal(ids(broken), [mine[1], mine[3]].sort(), "status");
    const single = await list({ originOwnerId: "list-c", provider: "hibob", pageSize: 100 }, "single");
    equal(ids(single), [mine[4]], "origin_owner_id and provider");
  });
  await check("GET /accounts pages: page and page_size cover every account once", async () => {
    const pages = [];
    for (let page = 0; page < 10; page += 1) {
      const found = await list({ accountIds: mine, pageSize: 2, page }, `page ${page}`);
      pages.push(found);
      if (found.length < 2) break;
    }
    equal(pages.map((p) => p.length), [2, 2, 1], "page sizes");
    equal(ids(pages.flat()), [...mine].sort(), "every account once");
  });
}

async function errorBodies(sdk) {
  await check("401 for a wrong API key: UnauthorizedResponse", async () => {
    const stranger = sdkClient("not-the-key").sdk;
    await refused(() => stranger.accounts.listLinkedAccounts({}), errors.UnauthorizedResponse, 401);
  });
  await check("401 for an unknown session token: UnauthorizedResponse", async () => {
    await refused(
      () => sdk.connectSessions.authenticateConnectSession({ token: "cst_unknown" }),
      errors.UnauthorizedResponse,
      401,
    );
  });
  await check("400 for a session StackOne refuses: BadRequestResponse", async () => {
    await refused(
      () => sdk.connectSessions.createConnectSession({
        originOwnerId: "t", originOwnerName: "T", type: "staging",
      }),
      errors.BadRequestResponse,
      400,
    );
  });
  await check("404 for a re-connect session of an unknown account: NotFoundResponse", async () => {
    await refused(
      () => sdk.connectSessions.createConnectSession({
        originOwnerId: "t", originOwnerName: "T", accountId: "no-such-account",
      }),
      errors.NotFoundResponse,
      404,
    );
  });
  const byStatus = {
    400: errors.BadRequestResponse,
    403: errors.ForbiddenResponse,
    404: errors.NotFoundResponse,
    408: errors.RequestTimedOutResponse,
    409: errors.ConflictResponse,
    422: errors.UnprocessableEntityResponse,
    429: errors.TooManyRequestsResponse,
    500: errors.InternalServerErrorResponse,
    501: errors.NotImplementedResponse,
    502: errors.BadGatewayResponse,
  };
  for (const [status, errorClass] of Object.entries(byStatus)) {
    await check(`${status} error body: ${errorClass.name}`, async () => {
      await emulator("POST", "/emulator/faults", {
        path: "/accounts",
        status: Number(status),
        retry_after: 1,
        times: 1,
      });
      await refused(() => sdk.accounts.listLinkedAccounts({}), errorClass, Number(status));
    });
  }
}

// --- requests: what our client sent, against the SDK's outbound schemas -----------------

const LIST_KEYS = {
  account_ids: "accountIds",
  origin_owner_id: "originOwnerId",
  origin_owner_ids: "originOwnerIds",
  page: "page",
  page_size: "pageSize",
  provider: "provider",
  providers: "providers",
  status: "status",
};
const LIST_ARRAYS = new Set(["account_ids", "origin_owner_ids", "providers", "status"]);

function checkAuth(request) {
  const expected = `Basic ${Buffer.from(`${apiKey}:`).toString("base64")}`;
  equal(request.headers.authorization, expected, "Basic auth with the key and no password");
}

function checkSessionBody(request, seenFields) {
  expect(request.headers["content-type"]?.startsWith("application/json"), "a JSON body");
  const schema = shared.ConnectSessionCreate$inboundSchema;
  const typed = conforms(schema, request.body, "the body");
  Object.keys(request.body).forEach((key) => seenFields.add(key));
  // What the SDK would send for the same session must be what our client sent.
  const resent = shared.ConnectSessionCreate$outboundSchema.parse(typed);
  for (const [key, value] of Object.entries(request.body)) {
    // The SDK's metadata schema is an empty object, which drops every key it is given.
    if (key !== "metadata") {
      equal(resent[key], value, key);
    }
  }
}

function checkListQuery(request) {
  const typed = {};
  for (const [key, value] of request.query) {
    expect(key in LIST_KEYS, `${key} is not a query parameter of GET /accounts`);
    const name = LIST_KEYS[key];
    if (LIST_ARRAYS.has(key)) {
      typed[name] = [...(typed[name] ?? []), value];
    } else {
      expect(!(name in typed), `${key} appears twice`);
      expect(key.startsWith("page") ? /^[0-9]+$/.test(value) : true, `${key} is a number`);
      typed[name] = key.startsWith("page") ? Number(value) : value;
    }
  }
  const payload = operations.StackoneListLinkedAccountsRequest$outboundSchema.parse(typed);
  const query = encodeFormQuery(
    Object.fromEntries(Object.keys(LIST_KEYS).map((key) => [key, payload[key]])),
  );
  const sdkPairs = [...new URLSearchParams(query)].sort();
  equal([...request.query].sort(), sdkPairs, "the query the SDK would send");
}

function checkAccountPath(request, schema) {
  const segments = request.path.split("/");
  expect(segments.length === 3, `${request.path} is /accounts/{id}`);
  schema.parse({ id: decodeURIComponent(segments[2]) });
}

async function requests() {
  const recorded = await emulator("GET", "/emulator/requests");
  const ours = recorded.filter((r) => r.headers["user-agent"]?.startsWith(CLIENT_AGENT));
  const seenEndpoints = new Set();
  const seenFields = new Set();
  for (const request of ours) {
    const isAccount = /^\/accounts\/[^/]+$/.test(request.path);
    const endpoint = `${request.method} ${isAccount ? "/accounts/{id}" : request.path}`;
    seenEndpoints.add(endpoint);
    await check(`${endpoint} as our client sent it (${JSON.stringify(request.query)})`, () => {
      checkAuth(request);
      switch (endpoint) {
        case "POST /connect_sessions":
          return checkSessionBody(request, seenFields);
        case "POST /connect_sessions/authenticate":
          return conforms(shared.ConnectSessionAuthenticate$inboundSchema, request.body, "the body");
        case "GET /accounts":
          return checkListQuery(request);
        case "GET /accounts/{id}":
          return checkAccountPath(request, operations.StackoneGetAccountRequest$outboundSchema);
        case "DELETE /accounts/{id}":
          return checkAccountPath(request, operations.StackoneDeleteAccountRequest$outboundSchema);
        default:
          throw new Error("not an endpoint of StackOne's SDK");
      }
    });
  }
  await check("our client used every endpoint", () => {
    const wanted = ["POST /connect_sessions", "POST /connect_sessions/authenticate",
      "GET /accounts", "GET /accounts/{id}", "DELETE /accounts/{id}"];
    const missing = wanted.filter((endpoint) => !seenEndpoints.has(endpoint));
    expect(missing.length === 0, `no request to ${missing.join(", ")}`);
  });
  await check("our client sent every field of ConnectSessionCreate", () => {
    const missing = fieldsOf(shared.ConnectSessionCreate$inboundSchema).filter(
      (key) => !seenFields.has(key),
    );
    expect(missing.length === 0, `never sent ${missing.join(", ")}`);
  });
}

if (mode === "responses") {
  await responses();
} else if (mode === "requests") {
  await requests();
} else {
  console.error("usage: node conformance.mjs responses|requests BASE_URL API_KEY");
  process.exit(2);
}
console.log(`${passed} passed, ${failed} failed`);
process.exitCode = failed ? 1 : 0;
