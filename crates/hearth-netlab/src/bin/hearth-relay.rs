//! `hearth-relay --tcp|--udp LISTEN TARGET --delay-ms N`: the delay relay by hand, e.g. to
//! put 20 ms between two nodes in a lab. Runs until killed, printing counters every 10 s.

use hearth_netlab::Relay;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: hearth-relay --tcp|--udp LISTEN TARGET --delay-ms N\n\
  e.g. hearth-relay --tcp 10.20.0.254:7000 10.20.0.2:7000 --delay-ms 20";

struct Args {
    tcp: bool,
    listen: SocketAddr,
    target: SocketAddr,
    delay: Duration,
}

fn parse(args: &[String]) -> Result<Args, String> {
    let mut proto = None;
    let mut delay = None;
    let mut addrs = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--tcp" => proto = Some(true),
            "--udp" => proto = Some(false),
            "--delay-ms" => {
                let v = it.next().ok_or("--delay-ms needs a value")?;
                let ms: u64 = v.parse().map_err(|_| format!("bad --delay-ms {v:?}"))?;
                delay = Some(Duration::from_millis(ms));
            }
            "-h" | "--help" => return Err(String::new()),
            other => {
                let addr: SocketAddr = other
                    .parse()
                    .map_err(|_| format!("bad address {other:?} (want IP:PORT)"))?;
                addrs.push(addr);
            }
        }
    }
    let tcp = proto.ok_or("give --tcp or --udp")?;
    let [listen, target] = addrs[..] else {
        return Err("give LISTEN and TARGET addresses".into());
    };
    Ok(Args {
        tcp,
        listen,
        target,
        delay: delay.ok_or("give --delay-ms")?,
    })
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let args = match parse(&argv) {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("hearth-relay: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let relay = if args.tcp {
        Relay::tcp(args.listen, args.target, args.delay)
    } else {
        Relay::udp(args.listen, args.target, args.delay)
    };
    let relay = match relay {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hearth-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "relaying {} {} -> {} with {} ms one way",
        if args.tcp { "tcp" } else { "udp" },
        relay.local_addr(),
        args.target,
        args.delay.as_millis()
    );
    loop {
        std::thread::sleep(Duration::from_secs(10));
        println!("{:?}", relay.stats());
    }
}
