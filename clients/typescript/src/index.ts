/**
 * The TypeScript client of stackone-connect: the messages and service generated from
 * the protos (`buf generate`), a typed client, and a watch that resumes by itself.
 */
export * from "../gen/stackone_connect/v1/stackone_connect_pb.js";
export { connectService, listAllAccounts } from "./client.js";
export type { ConnectOptions, ConnectServiceClient, ServiceConnection } from "./client.js";
export { FileCursorStore, watch } from "./watch.js";
export { AccountView, removesAccount } from "./view.js";
export type { CursorStore, Retry, Start, WatchItem, WatchOptions } from "./watch.js";
