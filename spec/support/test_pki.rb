# frozen_string_literal: true

require "base64"
require "digest"
require "fileutils"
require "json"
require "open3"
require "openssl"
require "securerandom"
require "timeout"
require "tmpdir"

# Test credentials made per run, with no tool beyond Ruby's OpenSSL and the openssl CLI:
#
#   NKeys      NKeys.pair(:user)          # => NKeys::Pair (seed "SU...", public_key "U...")
#   JWTs       NKeys::Operator.new.account.user.creds  # decentralized auth chain (JWT + seed)
#   TLS        TestCA.new(dir).server_cert / client_cert  # CA, server cert (SAN 127.0.0.1,
#                                                         # localhost), client cert
#
# No dependency on the gem.
module NKeys
  PREFIX = { seed: 18 << 3, operator: 14 << 3, account: 0, user: 20 << 3 }.freeze
  # PKCS#8 DER of an Ed25519 private key, less the 32-byte seed at its end.
  ED25519_PKCS8_PREFIX = ["302e020100300506032b657004220420"].pack("H*").freeze
  B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"

  # An Ed25519 key pair in NKey encoding.
  class Pair
    attr_reader :type, :raw_seed

    def initialize(type, raw_seed = SecureRandom.random_bytes(32))
      @type = type
      @raw_seed = raw_seed
      @key = OpenSSL::PKey.read(ED25519_PKCS8_PREFIX + raw_seed)
    end

    def public_key
      NKeys.encode([PREFIX.fetch(type)].pack("C") + raw_public)
    end

    def seed
      p = PREFIX.fetch(type)
      NKeys.encode([PREFIX[:seed] | (p >> 5), (p & 31) << 3].pack("CC") + raw_seed)
    end

    def raw_public
      @key.public_to_der[-32..]
    end

    def sign(data)
      @key.sign(nil, data)
    end
  end

  module_function

  def pair(type) = Pair.new(type)

  def crc16(bytes)
    crc = 0
    bytes.each_byte do |b|
      crc ^= b << 8
      8.times { crc = crc & 0x8000 != 0 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff }
    end
    crc
  end

  def encode(raw)
    base32(raw + [crc16(raw)].pack("v"))
  end

  def base32(bytes)
    bits = bytes.unpack1("B*")
    bits.scan(/.{1,5}/).map { |chunk| B32[chunk.ljust(5, "0").to_i(2)] }.join
  end

  def b64url(data) = Base64.urlsafe_encode64(data, padding: false)

  # A NATS v2 JWT with `claims` (sub, name, nats), issued and signed by `issuer` (a Pair).
  def jwt(issuer, claims)
    header = b64url(JSON.generate(typ: "JWT", alg: "ed25519-nkey"))
    body = claims.merge(iat: Time.now.to_i, iss: issuer.public_key)
    body[:jti] = base32(Digest::SHA256.digest(JSON.generate(body)))
    payload = b64url(JSON.generate(body))
    signing_input = "#{header}.#{payload}"
    "#{signing_input}.#{b64url(issuer.sign(signing_input))}"
  end

  # operator -> account (JetStream enabled) -> user, for `resolver: MEMORY` servers.
  class Operator
    attr_reader :pair, :jwt

    def initialize(name = "test-operator")
      @pair = NKeys.pair(:operator)
      @jwt = NKeys.jwt(@pair, sub: @pair.public_key, name: name, nats: { type: "operator", version: 2 })
    end

    def account(name = "APP", jetstream: true)
      Account.new(self, name, jetstream: jetstream)
    end
  end

  class Account
    LIMITS = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1,
               leaf: -1 }.freeze
    JS_LIMITS = { mem_storage: -1, disk_storage: -1, streams: -1, consumer: -1 }.freeze

    attr_reader :pair, :jwt, :operator

    def initialize(operator, name, jetstream:)
      @operator = operator
      @pair = NKeys.pair(:account)
      limits = jetstream ? LIMITS.merge(JS_LIMITS) : LIMITS
      @jwt = NKeys.jwt(operator.pair, sub: @pair.public_key, name: name,
                                      nats: { limits: limits, default_permissions: { pub: {}, sub: {} },
                                              type: "account", version: 2 })
    end

    def user(name = "app-user")
      User.new(self, name)
    end
  end

  class User
    attr_reader :pair, :jwt, :account

    def initialize(account, name)
      @account = account
      @pair = NKeys.pair(:user)
      @jwt = NKeys.jwt(account.pair, sub: @pair.public_key, name: name,
                                     nats: { pub: {}, sub: {}, subs: -1, data: -1, payload: -1,
                                             type: "user", version: 2 })
    end

    # The .creds file text nsc writes.
    def creds
      <<~CREDS
        -----BEGIN NATS USER JWT-----
        #{jwt}
        ------END NATS USER JWT------

        ************************* IMPORTANT *************************
        NKEY Seed printed below can be used to sign and prove identity.
        NKEYs are sensitive and should be treated as secrets.

        -----BEGIN USER NKEY SEED-----
        #{pair.seed}
        ------END USER NKEY SEED------

        *************************************************************
      CREDS
    end
  end

  # Server config text for operator mode with the accounts preloaded (and a system
  # account, which JetStream needs in operator mode).
  def operator_config(operator, *accounts)
    system = operator.account("SYS", jetstream: false)
    preload = [system, *accounts].map { |a| "    #{a.pair.public_key}: \"#{a.jwt}\"" }.join("\n")
    <<~CONF
      operator: "#{operator.jwt}"
      system_account: #{system.pair.public_key}
      resolver: MEMORY
      resolver_preload: {
      #{preload}
      }
    CONF
  end
end

# A throwaway certificate authority and the certificates the TLS specs need, made with
# the openssl CLI in `dir`.
class TestCA
  attr_reader :dir, :name, :cert, :key

  def initialize(dir, name: "jsb-test-ca")
    @dir = dir
    @name = name
    FileUtils.mkdir_p(dir)
    @key = path("#{name}.key")
    @cert = path("#{name}.pem")
    run!("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", @key, "-out", @cert, "-days", "2", "-subj", "/CN=#{name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
  end

  # [cert_path, key_path] for the server: SAN 127.0.0.1 and localhost.
  def server_cert(cn = "nats-test-server")
    issue(cn, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
  end

  # [cert_path, key_path] for a client.
  def client_cert(cn = "jsb-test-client")
    issue(cn, "extendedKeyUsage=clientAuth\n")
  end

  private

  def issue(cn, extensions)
    base = path("#{name}-#{cn}")
    ext = "#{base}.ext"
    File.write(ext, "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n#{extensions}")
    run!("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", "#{base}.key", "-out", "#{base}.csr", "-subj", "/CN=#{cn}")
    run!("openssl", "x509", "-req", "-in", "#{base}.csr", "-CA", cert, "-CAkey", key, "-CAcreateserial",
         "-out", "#{base}.pem", "-days", "2", "-extfile", ext)
    ["#{base}.pem", "#{base}.key"]
  end

  def path(file) = File.join(dir, file)

  def run!(*cmd)
    out, status = Open3.capture2e(*cmd)
    raise "#{cmd.join(' ')} failed: #{out}" unless status.success?

    out
  end
end
