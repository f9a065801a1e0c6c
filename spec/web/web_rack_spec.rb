# frozen_string_literal: true

require "json"
require "rack/mock"
require "jetstream_bridge/web"

# JetstreamBridge::Web as a plain Rack app (`run JetstreamBridge::Web` in a config.ru, no
# Rails, no session): the gem's own CSRF token (a cookie the form field must match), the
# read-only switch, and pages under a mount path. Against the shared real nats-server; the
# dead letters are written to the DLQ subject as the consumer writes them.
RSpec.describe JetstreamBridge::Web do
  let(:app) { Rack::MockRequest.new(described_class) }

  before { configure_bridge(use_dlq: true) }
  after { described_class.read_only = false }

  def stored_dead_letter(reason: "unrecoverable")
    JetstreamBridge.ensure_topology!
    config = JetstreamBridge.config
    body = JSON.generate(event_id: SecureRandom.uuid, event_type: "user.created", payload: { "name" => "<b>ada</b>" })
    headers = { "X-Dead-Letter-Reason" => reason, "X-Original-Subject" => config.destination_subject,
                "X-Error-Class" => "ArgumentError" }
    published = publish_as_is(config.dlq_subject, body, "dlq:test:#{SecureRandom.hex(4)}", headers: headers)
    published.seq
  end

  # [cookie, masked token] from a confirmation page, as a browser gets them.
  def token_for(path)
    page = app.get(path, "SCRIPT_NAME" => "/ops/jetstream")
    expect(page.status).to eq(200)
    cookie = page.headers["Set-Cookie"][/jetstream_bridge_csrf=[^;]+/]
    # Attribute names in any case (RFC 6265): Rack 2 writes HttpOnly, Rack 3 (Rails 7.2) httponly.
    expect(page.headers["Set-Cookie"].downcase).to include("httponly", "samesite=strict", "path=/ops/jetstream")
    [cookie, page.body[/name="authenticity_token" value="([^"]+)"/, 1]]
  end

  def post(path, cookie: nil, token: nil)
    env = { "SCRIPT_NAME" => "/ops/jetstream", input: token ? "authenticity_token=#{Rack::Utils.escape(token)}" : "" }
    env["HTTP_COOKIE"] = cookie if cookie
    app.post(path, env)
  end

  it "acts on a POST whose form token matches its cookie, and refuses one without (403), changing nothing" do
    seq = stored_dead_letter
    cookie, token = token_for("/dead_letters/#{seq}/discard")
    _, other_token = token_for("/dead_letters/#{seq}/discard") # another browser's pair

    expect(post("/dead_letters/#{seq}/discard").status).to eq(403)
    expect(post("/dead_letters/#{seq}/discard", token: token).status).to eq(403)
    expect(post("/dead_letters/#{seq}/discard", cookie: cookie).status).to eq(403)
    expect(post("/dead_letters/#{seq}/discard", cookie: cookie, token: other_token).status).to eq(403)
    expect(JetstreamBridge::DeadLetters.find(seq)).not_to be_nil

    done = post("/dead_letters/#{seq}/discard", cookie: cookie, token: token)
    expect(done.status).to eq(303)
    expect(done.headers["Location"]).to eq("/ops/jetstream/dead_letters?done=discard&seq=#{seq}")
    expect(JetstreamBridge::DeadLetters.find(seq)).to be_nil
  end

  it "Discard all for a reason deletes the entries of that reason only, and says how many" do
    kept = stored_dead_letter(reason: "max_deliver")
    gone = Array.new(2) { stored_dead_letter(reason: "unrecoverable") }
    cookie, token = token_for("/dead_letters/all/discard?reason=unrecoverable")
    done = post("/dead_letters/all/discard?reason=unrecoverable", cookie: cookie, token: token)
    expect(done.headers["Location"]).to eq("/ops/jetstream/dead_letters?done=discard_all&n=2&reason=unrecoverable")
    expect(gone.map { |seq| JetstreamBridge::DeadLetters.find(seq) }).to all(be_nil)
    expect(JetstreamBridge::DeadLetters.find(kept)).not_to be_nil
    page = app.get(done.headers["Location"].delete_prefix("/ops/jetstream"))
    expect(page.body).to include("Discarded 2 dead letters with reason unrecoverable.")
  end

  it "masks the token differently on every page, each accepted" do
    seq = stored_dead_letter
    cookie, first = token_for("/dead_letters/#{seq}/replay")
    page = app.get("/dead_letters/#{seq}/discard", "SCRIPT_NAME" => "/ops/jetstream", "HTTP_COOKIE" => cookie)
    second = page.body[/name="authenticity_token" value="([^"]+)"/, 1]
    expect(page.headers["Set-Cookie"]).to be_nil # the browser's cookie is kept
    expect(second).not_to eq(first)
    expect(post("/dead_letters/#{seq}/discard", cookie: cookie, token: first).status).to eq(303)
  end

  it "escapes what it shows and links under the mount path" do
    seq = stored_dead_letter
    page = app.get("/dead_letters/#{seq}", "SCRIPT_NAME" => "/ops/jetstream")
    expect(page.body).to include("&lt;b&gt;ada&lt;/b&gt;")
    expect(page.body).not_to include("<b>ada</b>")
    expect(page.body).to include('href="/ops/jetstream/dead_letters/')
    expect(page.headers["Content-Security-Policy"]).to include("default-src 'none'")
  end

  it "read-only: no action is offered and every POST is refused, even with a valid token" do
    seq = stored_dead_letter
    cookie, token = token_for("/dead_letters/#{seq}/discard")
    described_class.read_only = true
    page = app.get("/dead_letters/#{seq}", "SCRIPT_NAME" => "/ops/jetstream")
    expect(page.body).not_to include("/discard", "/replay")
    expect(app.get("/dead_letters/#{seq}/discard").status).to eq(403)
    expect(post("/dead_letters/#{seq}/discard", cookie: cookie, token: token).status).to eq(403)
    expect(JetstreamBridge::DeadLetters.find(seq)).not_to be_nil
  end

  it "answers 404 for an unknown page or dead letter, and 403 to a POST without a token before routing it" do
    expect(app.get("/nope").status).to eq(404)
    expect(app.get("/dead_letters/999999").status).to eq(404)
    expect(app.post("/outbox").status).to eq(403) # no token: refused before routing
  end
end
