{
  "targets": [
    {
      "target_name": "dtls_native",
      "sources": ["dtls.c"],
      "defines": ["NAPI_VERSION=8", "OPENSSL_API_COMPAT=30000", "OPENSSL_NO_DEPRECATED"],
      "cflags": ["-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"],
      "xcode_settings": { "OTHER_CFLAGS": ["-Wall", "-Wextra", "-fvisibility=hidden"] }
    }
  ]
}
