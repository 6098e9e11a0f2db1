// The page: renders StackOne's Hub with a fresh session token, verifies each new account
// with the backend, and lists the customer's account events as they arrive.
const accountBox = document.querySelector('#account');

// With `account_id`: a session that reconnects that account instead of linking another;
// with `auth_link`: one that lasts long enough to send by e-mail.
async function newSession(options = {}) {
  const response = await fetch('/api/connect-session', {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(options),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(`No connect session: ${body.error}`);
  return body;
}

// A token is for one Hub: every Hub gets a fresh one.
async function showHub(accountId) {
  const session = await newSession(accountId ? { account_id: accountId } : {});
  const hub = document.createElement('stackone-hub');
  hub.setAttribute('token', session.token);
  hub.setAttribute('base-url', session.hub_base_url);
  // Re-connect mode: the Hub re-opens this account for new credentials, not a new one.
  if (accountId) hub.setAttribute('account-id', accountId);
  hub.setAttribute('height', '440px');
  hub.addEventListener('success', (event) => verify(event.detail.id, 'success'));
  hub.addEventListener('close', reporting(showHub, '#hub-slot'));
  document.querySelector('#hub-slot').replaceChildren(hub);
}

async function createAuthLink() {
  document.querySelector('#link-error').textContent = '';
  const session = await newSession({ auth_link: true });
  const link = document.querySelector('#auth-link');
  link.href = session.auth_link_url;
  document.querySelector('#link-expiry').textContent = `(valid until ${session.expires_at})`;
  document.querySelector('#link-slot').hidden = false;
}

function line(label, value) {
  const row = document.createElement('div');
  row.append(`${label}: `, value);
  return row;
}

const LEARNED_FROM = {
  success: "the Hub's success event",
  event: 'its account.created event (an Auth Link has no callback)',
  relinked: 'its account.updated event (the Auth Link re-opened an account the customer had)',
};

// The Hub's success only says an account was linked; StackOne's account says whether it works.
async function verify(accountId, learnedFrom) {
  accountBox.dataset.accountId = accountId;
  accountBox.dataset.learnedFrom = learnedFrom;
  accountBox.dataset.state = 'verifying';
  accountBox.textContent = `Verifying account ${accountId}…`;
  const response = await fetch(`/api/accounts/${encodeURIComponent(accountId)}`);
  const body = await response.json();
  if (!response.ok) {
    accountBox.dataset.state = 'failed';
    accountBox.textContent = `Could not verify account ${accountId}: ${body.error}`;
    return;
  }
  const { account, meaning } = body;
  const status = document.createElement('span');
  status.className = 'status';
  status.textContent = account.raw_status;
  accountBox.dataset.state = 'verified';
  accountBox.dataset.status = account.raw_status;
  accountBox.replaceChildren(
    line('Status', status), line('Account', account.id), line('Provider', account.provider),
    line('Customer', `${account.origin_owner_name} (${account.origin_owner_id})`),
    line('What it means', meaning), line('Learned from', LEARNED_FROM[learnedFrom]),
  );
  for (const reason of account.status_reasons ?? []) {
    accountBox.append(line(`Reason ${reason.code}`, reason.description));
  }
}

function statusName(raw, normalised) {
  return raw || (normalised ?? '').replace('ACCOUNT_STATUS_', '').toLowerCase();
}

// The customer's accounts as the service's registry holds them; one in error or expired
// offers a reconnect (a session bound to it, the Hub above in re-connect mode).
async function loadAccounts() {
  const list = document.querySelector('#accounts');
  const source = document.querySelector('#accounts-source');
  const response = await fetch('/api/accounts');
  const body = await response.json();
  if (!response.ok) {
    list.dataset.state = 'failed';
    list.replaceChildren(body.error);
    return;
  }
  list.dataset.state = 'loaded';
  source.dataset.answeredFrom = body.answered_from;
  source.textContent = body.answered_from === 'registry'
    ? `from the registry, as of cursor ${body.cursor}`
    : 'from StackOne: the registry is not complete yet';
  const items = body.accounts.map(({ account, meaning, reconnect }) => {
    const item = document.createElement('li');
    item.dataset.accountId = account.id;
    item.dataset.status = statusName(account.raw_status, account.status);
    item.append(`${account.provider_name || account.provider} (${account.id}): `,
      item.dataset.status, ` — ${meaning}`);
    if (reconnect) {
      const button = document.createElement('button');
      button.type = 'button';
      button.textContent = 'Reconnect';
      button.addEventListener('click', reporting(() => showHub(account.id), '#hub-slot'));
      item.append(' ', button);
    }
    return item;
  });
  list.replaceChildren(...(items.length ? items : ['No tools linked yet.']));
}

// Statuses a customer mends by reconnecting (the backend offers Reconnect for them).
const BROKEN = new Set(['error', 'expired']);

// A broken account working again. The event carries the status before it, so the page
// needs no memory of its own to tell a recovery from any other update.
function showRecovery(event) {
  const { account } = event;
  const before = statusName(event.previous_raw_status, event.previous_status);
  if (!BROKEN.has(before) || account.raw_status !== 'active') return;
  const notice = document.querySelector('#recovery');
  notice.dataset.accountId = account.id;
  notice.dataset.change = `${before} -> active`;
  notice.textContent = `Reconnected: ${account.provider_name || account.provider} ` +
    `(${account.id}) went from ${before} to active, as its ${event.type} event says.`;
  notice.hidden = false;
}

// Live events from the backend; EventSource resumes after the last id by itself.
function followEvents() {
  const state = document.querySelector('#events-state');
  const source = new EventSource('/api/events');
  source.addEventListener('bookmark', () => {
    state.dataset.state = 'live';
    state.textContent = 'live';
  });
  source.addEventListener('account', (message) => {
    const event = JSON.parse(message.data);
    const { account } = event;
    const item = document.createElement('li');
    item.dataset.type = event.type;
    item.dataset.accountId = account.id;
    // The status before the event, when it had one: `active -> error` is a break.
    const before = statusName(event.previous_raw_status, event.previous_status);
    const status = before ? `${before} -> ${account.raw_status ?? ''}` : account.raw_status ?? '';
    item.dataset.status = status;
    item.textContent = `${event.type}  ${account.provider}  ${account.id}  ${status}  ` +
      `${(event.verification ?? '').replace('VERIFICATION_', '').toLowerCase()}`;
    document.querySelector('#events').append(item);
    showRecovery(event);
    reporting(loadAccounts, '#accounts')();
    // An Auth Link has no success callback: the event is how the app learns of the account.
    // Linking a provider the customer already has re-opens that account: account.updated.
    const awaitingLink = !document.querySelector('#link-slot').hidden;
    if (accountBox.dataset.accountId !== account.id) {
      if (event.type === 'account.created') verify(account.id, 'event');
      else if (event.type === 'account.updated' && awaitingLink) verify(account.id, 'relinked');
    }
  });
  // The page's cursor was older than the service keeps: events were missed, so the
  // accounts are read again rather than trusted.
  source.addEventListener('resynced', reporting(loadAccounts, '#accounts'));
  source.addEventListener('failed', (message) => {
    state.dataset.state = 'failed';
    state.textContent = JSON.parse(message.data).error;
  });
  source.onerror = () => {
    state.dataset.state = 'reconnecting';
    state.textContent = 'reconnecting…';
  };
}

// Shows why a step failed (e.g. the service is down) where its result would have been.
function reporting(step, where) {
  return () => step().catch((error) => { document.querySelector(where).textContent = error.message; });
}

document.querySelector('#new-hub').addEventListener('click', reporting(showHub, '#hub-slot'));
document.querySelector('#create-link')
  .addEventListener('click', reporting(createAuthLink, '#link-error'));
followEvents();
reporting(loadAccounts, '#accounts')();
reporting(showHub, '#hub-slot')();
