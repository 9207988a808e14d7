pool "a" { proxies = { "http://u:pa ss@h:1" } }
