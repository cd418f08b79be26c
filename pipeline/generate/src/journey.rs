//! Each customer's calls over the span: visits, carts, orders, renewals,
//! tickets, consent and tier changes, and the anonymous visitors.

use super::*;

/// Which ids a call carries: browser calls carry the anonymous id (and the
/// user id once the person is known), server-side calls only the user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Who {
    Anon,
    User,
    Both,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    /// A `page` call with this page name.
    Page(&'static str),
    /// A `track` call with this event name.
    Track(&'static str),
    Identify,
}

/// One generated call, before it gets its `messageId` and is serialized.
pub(crate) struct Ev {
    pub(crate) ts: DateTime<Utc>,
    pub(crate) call: Call,
    pub(crate) who: Who,
    /// `properties`, or `traits` for an identify call.
    pub(crate) body: Value,
    pub(crate) context: Value,
}

impl Ev {
    pub(crate) fn write(self, out: &mut Vec<u8>, actor: &Actor, message_id: &str) -> Result<()> {
        let mut fields: Vec<(&str, Value)> = Vec::with_capacity(8);
        match self.call {
            Call::Page(name) => {
                fields.push(("type", json!("page")));
                fields.push(("name", json!(name)));
            }
            Call::Track(event) => {
                fields.push(("type", json!("track")));
                fields.push(("event", json!(event)));
            }
            Call::Identify => fields.push(("type", json!("identify"))),
        }
        if let (Who::User | Who::Both, Some(user_id)) = (self.who, &actor.user_id) {
            fields.push(("userId", json!(user_id)));
        }
        if matches!(self.who, Who::Anon | Who::Both) {
            fields.push(("anonymousId", json!(actor.anon_id)));
        }
        fields.push(("messageId", json!(message_id)));
        fields.push(("timestamp", json!(format_ts(self.ts))));
        let body_key = if self.call == Call::Identify {
            "traits"
        } else {
            "properties"
        };
        fields.push((body_key, self.body));
        fields.push(("context", self.context));
        write_object(out, &fields)
    }
}

pub(crate) const SHOP_URL: &str = "https://shop.example";

pub(crate) const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/128.0.0.0 Mobile Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:130.0) Gecko/20100101 Firefox/130.0",
];

/// Documentation address ranges (RFC 5737): never a real client.
pub(crate) const IP_PREFIXES: [&str; 3] = ["203.0.113", "198.51.100", "192.0.2"];

/// The person behind a journey, as their browser and the shop's servers see
/// them.
pub(crate) struct Actor {
    /// Short label used in cart, order and ticket ids ("00017", "v00003").
    pub(crate) label: String,
    pub(crate) user_id: Option<String>,
    pub(crate) anon_id: String,
    pub(crate) zone: Zone,
    pub(crate) user_agent: &'static str,
    pub(crate) ip: String,
    /// Hours this person's day runs early (negative) or late (positive).
    pub(crate) hour_shift: i64,
    /// Two categories this person mostly shops in.
    pub(crate) favourites: [usize; 2],
}

impl Actor {
    pub(crate) fn new(
        rng: &mut StdRng,
        label: String,
        user_id: Option<String>,
        zone: Zone,
    ) -> Self {
        let anon_id = uuid(rng);
        let user_agent = pick(rng, &USER_AGENTS);
        let ip = format!("{}.{}", pick(rng, &IP_PREFIXES), rng.random_range(1..=254));
        let hour_shift = rng.random_range(-2..=2);
        let first = rng.random_range(0..CATEGORIES.len());
        let second = (first + rng.random_range(1..CATEGORIES.len())) % CATEGORIES.len();
        Self {
            label,
            user_id,
            anon_id,
            zone,
            user_agent,
            ip,
            hour_shift,
            favourites: [first, second],
        }
    }
}

pub(crate) fn server_context(zone: Zone) -> Value {
    json!({
        "library": {"name": "analytics-node", "version": "2.1.2"},
        "timezone": zone.iana(),
    })
}

/// A cart, kept across visits so an abandoned one can be picked up later.
pub(crate) struct Cart {
    pub(crate) id: String,
    pub(crate) items: Vec<(usize, u64)>,
    pub(crate) order_id: Option<String>,
}

/// Builds one person's calls, visit by visit.
pub(crate) struct Journey {
    pub(crate) rng: StdRng,
    pub(crate) actor: Actor,
    pub(crate) currency: Currency,
    pub(crate) events: Vec<Ev>,
    /// Time of the latest call in the current visit.
    pub(crate) clock: DateTime<Utc>,
    pub(crate) visit_start: DateTime<Utc>,
    pub(crate) pages_in_visit: u32,
    /// Path of the page the browser is on, reported in `context.page`.
    pub(crate) page: String,
    /// Ids on browser calls: anonymous until the person signs up or logs in.
    pub(crate) who: Who,
    /// Earlier visits, so new ones do not overlap them.
    pub(crate) visits: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    pub(crate) carts: u32,
    pub(crate) orders: u32,
    pub(crate) tickets: u32,
    /// The product this person keeps looking at but never buys.
    pub(crate) never_buys: Option<usize>,
    pub(crate) purchases: Vec<DateTime<Utc>>,
}

impl Journey {
    pub(crate) fn new(rng: StdRng, actor: Actor, who: Who) -> Self {
        Self {
            rng,
            currency: actor.zone.currency(),
            actor,
            events: Vec::new(),
            clock: DateTime::UNIX_EPOCH,
            visit_start: DateTime::UNIX_EPOCH,
            pages_in_visit: 0,
            page: "/".into(),
            who,
            visits: Vec::new(),
            carts: 0,
            orders: 0,
            tickets: 0,
            never_buys: None,
            purchases: Vec::new(),
        }
    }

    // -- time --------------------------------------------------------------

    /// A start time for a new visit in `[lo, hi)`: a day in the window, an
    /// hour from the person's daily rhythm in their own zone, and (if it can)
    /// not on top of another visit.
    pub(crate) fn visit_time(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) -> DateTime<Utc> {
        let gap = Duration::minutes(30);
        let mut fallback = lo;
        for attempt in 0..24 {
            let anchor = instant_between(&mut self.rng, lo, hi);
            fallback = anchor;
            let day = self.actor.zone.to_local(anchor).date();
            let hour = (pick_weighted(&mut self.rng, &HOUR_WEIGHTS) as i64 + self.actor.hour_shift)
                .rem_euclid(24);
            let local = day.and_time(NaiveTime::MIN)
                + Duration::hours(hour)
                + Duration::milliseconds(self.rng.random_range(0..3_600_000));
            let t = self.actor.zone.to_utc(local);
            if t < lo || t >= hi {
                continue;
            }
            let overlaps = self
                .visits
                .iter()
                .any(|(s, e)| t + gap > *s && t < *e + gap);
            if overlaps && attempt < 16 {
                continue;
            }
            return t;
        }
        // A window too narrow for the daily rhythm: any instant in it.
        fallback
    }

    pub(crate) fn begin(&mut self, t: DateTime<Utc>) {
        self.clock = t;
        self.visit_start = t;
        self.pages_in_visit = 0;
    }

    pub(crate) fn end(&mut self) {
        self.visits.push((self.visit_start, self.clock));
    }

    // -- calls -------------------------------------------------------------

    pub(crate) fn browser_context(&self) -> Value {
        let path = &self.page;
        json!({
            "library": {"name": "analytics.js", "version": "4.1.0"},
            "ip": self.actor.ip,
            "userAgent": self.actor.user_agent,
            "timezone": self.actor.zone.iana(),
            "locale": self.actor.zone.locale(),
            "page": {"path": path, "url": format!("{SHOP_URL}{path}")},
        })
    }

    /// A `page` call; after the first page of a visit, the person first
    /// spends a while reading the previous one.
    pub(crate) fn page(&mut self, name: &'static str, path: String, title: String) {
        if self.pages_in_visit > 0 {
            self.clock += Duration::milliseconds(self.rng.random_range(8_000..100_000));
        }
        self.pages_in_visit += 1;
        let body = json!({"path": path, "url": format!("{SHOP_URL}{path}"), "title": title});
        self.page = path;
        self.events.push(Ev {
            ts: self.clock,
            call: Call::Page(name),
            who: self.who,
            body,
            context: self.browser_context(),
        });
    }

    /// A `track` call from the browser, a moment after the page loaded or the
    /// button was clicked.
    pub(crate) fn track(&mut self, event: &'static str, properties: Value) {
        self.clock += Duration::milliseconds(self.rng.random_range(150..1_200));
        self.events.push(Ev {
            ts: self.clock,
            call: Call::Track(event),
            who: self.who,
            body: properties,
            context: self.browser_context(),
        });
    }

    /// A `track` call from the shop's servers (billing, support desk, SMS
    /// gateway): user id only, no browser context.
    pub(crate) fn server_track(
        &mut self,
        ts: DateTime<Utc>,
        event: &'static str,
        properties: Value,
    ) {
        self.events.push(Ev {
            ts,
            call: Call::Track(event),
            who: Who::User,
            body: properties,
            context: server_context(self.actor.zone),
        });
    }

    // -- catalog -----------------------------------------------------------

    pub(crate) fn pick_category(&mut self) -> usize {
        if self.rng.random_bool(0.7) {
            self.actor.favourites[self.rng.random_range(0..2)]
        } else {
            self.rng.random_range(0..CATEGORIES.len())
        }
    }

    pub(crate) fn pick_product(&mut self, category: usize) -> usize {
        let members: Vec<usize> = (0..PRODUCTS.len())
            .filter(|p| PRODUCTS[*p].category == category)
            .collect();
        members[pick_weighted(&mut self.rng, &POPULARITY[..members.len()])]
    }

    pub(crate) fn product_properties(&self, p: usize) -> Map<String, Value> {
        let mut props = Map::new();
        props.insert("product_id".into(), json!(product_id(p)));
        props.insert("sku".into(), json!(sku(p)));
        props.insert("category".into(), json!(CATEGORIES[PRODUCTS[p].category].1));
        props.insert("name".into(), json!(PRODUCTS[p].name));
        props.insert("price".into(), money(price_cents(p, self.currency)));
        props.insert("currency".into(), json!(self.currency.code()));
        props
    }

    // -- pieces of a visit -------------------------------------------------

    pub(crate) fn view_home(&mut self) {
        self.page("Home", "/".into(), "Home".into());
    }

    pub(crate) fn view_category(&mut self, c: usize) {
        let (slug, title) = CATEGORIES[c];
        self.page("Category", format!("/c/{slug}"), title.into());
    }

    pub(crate) fn view_product(&mut self, p: usize) {
        self.page("Product", product_path(p), PRODUCTS[p].name.into());
        let props = self.product_properties(p);
        self.track("Product Viewed", Value::Object(props));
    }

    pub(crate) fn add_to_cart(&mut self, cart: &mut Cart, p: usize) {
        let quantity = if self.rng.random_bool(0.8) { 1 } else { 2 };
        cart.items.push((p, quantity));
        let mut props = self.product_properties(p);
        props.insert("quantity".into(), json!(quantity));
        props.insert("cart_id".into(), json!(cart.id));
        self.track("Product Added", Value::Object(props));
    }

    pub(crate) fn new_cart(&mut self) -> Cart {
        self.carts += 1;
        Cart {
            id: format!("cart-{}-{}", self.actor.label, self.carts),
            items: Vec::new(),
            order_id: None,
        }
    }

    /// Checkout Started and, if `complete`, Order Completed for the cart.
    pub(crate) fn checkout(&mut self, cart: &mut Cart, complete: bool) {
        self.page("Checkout", "/checkout".into(), "Checkout".into());
        let order_id = match &cart.order_id {
            Some(id) => id.clone(),
            None => {
                self.orders += 1;
                let id = format!("ord-{}-{}", self.actor.label, self.orders);
                cart.order_id = Some(id.clone());
                id
            }
        };
        let products: Vec<Value> = cart
            .items
            .iter()
            .map(|(p, quantity)| {
                json!({
                    "product_id": product_id(*p),
                    "sku": sku(*p),
                    "name": PRODUCTS[*p].name,
                    "category": CATEGORIES[PRODUCTS[*p].category].1,
                    "price": money(price_cents(*p, self.currency)),
                    "quantity": quantity,
                })
            })
            .collect();
        let revenue: u64 = cart
            .items
            .iter()
            .map(|(p, quantity)| price_cents(*p, self.currency) * quantity)
            .sum();
        let currency = self.currency.code();
        self.track(
            "Checkout Started",
            json!({
                "order_id": order_id,
                "revenue": money(revenue),
                "currency": currency,
                "products": products,
            }),
        );
        if !complete {
            return;
        }
        // Free shipping from 50 in any currency.
        let shipping = if revenue >= 5_000 { 0 } else { 495 };
        self.page(
            "Order Confirmation",
            "/checkout/confirmation".into(),
            "Thank you".into(),
        );
        self.track(
            "Order Completed",
            json!({
                "order_id": order_id,
                "total": money(revenue + shipping),
                "revenue": money(revenue),
                "shipping": money(shipping),
                "tax": money(0),
                "currency": currency,
                "products": products,
            }),
        );
        self.purchases.push(self.clock);
    }

    // -- visits ------------------------------------------------------------

    /// One visit of a random kind somewhere in `[lo, hi)`. People without an
    /// account (`can_buy == false`) browse and fill carts but never check out.
    pub(crate) fn random_visit(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>, can_buy: bool) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        let mut comeback = None;
        match pick_weighted(&mut self.rng, &[42, 10, 33, 5]) {
            0 => self.browse(),
            1 => self.search(),
            2 => comeback = self.shop(can_buy),
            _ if can_buy => self.account(),
            _ => self.browse(),
        }
        self.end();
        if let Some((mut cart, at)) = comeback {
            self.begin(at);
            self.page("Cart", "/cart".into(), "Your cart".into());
            self.checkout(&mut cart, true);
            self.end();
        }
    }

    pub(crate) fn browse(&mut self) {
        if self.rng.random_bool(0.6) {
            self.view_home();
        }
        let c = self.pick_category();
        self.view_category(c);
        for _ in 0..self.rng.random_range(1..=3) {
            let p = if self.rng.random_bool(0.8) {
                self.pick_product(c)
            } else {
                let other = self.pick_category();
                self.pick_product(other)
            };
            self.view_product(p);
        }
    }

    pub(crate) fn search(&mut self) {
        let c = self.pick_category();
        self.page("Search", "/search".into(), "Search".into());
        let p = self.pick_product(c);
        self.view_product(p);
        if self.rng.random_bool(0.4) {
            let p = self.pick_product(c);
            self.view_product(p);
        }
    }

    pub(crate) fn account(&mut self) {
        self.page("Account", "/account".into(), "Your account".into());
        if self.rng.random_bool(0.5) {
            self.page(
                "Order History",
                "/account/orders".into(),
                "Your orders".into(),
            );
        }
    }

    /// Views, adds to cart, and then buys or walks away. Returns the cart and
    /// the time of a later visit that completes it, when the person comes
    /// back: either within 48 hours, or days later (still an abandoned cart
    /// by a 48-hour rule).
    pub(crate) fn shop(&mut self, can_buy: bool) -> Option<(Cart, DateTime<Utc>)> {
        if self.rng.random_bool(0.5) {
            self.view_home();
        }
        let c = self.pick_category();
        self.view_category(c);
        let mut p = self.pick_product(c);
        for _ in 0..self.rng.random_range(0..=1) {
            self.view_product(p);
            p = self.pick_product(c);
        }
        if Some(p) == self.never_buys {
            // This person never puts that one in a cart; they pick another.
            p = (p + 1) % PRODUCTS.len();
        }
        self.view_product(p);
        let mut cart = self.new_cart();
        self.add_to_cart(&mut cart, p);
        if self.rng.random_bool(0.3) {
            let other = self.pick_category();
            let q = self.pick_product(other);
            if q != p && Some(q) != self.never_buys {
                self.view_product(q);
                self.add_to_cart(&mut cart, q);
            }
        }
        self.page("Cart", "/cart".into(), "Your cart".into());
        if !can_buy {
            return None;
        }
        let outcome: f64 = self.rng.random();
        if outcome < 0.42 {
            self.checkout(&mut cart, true);
            return None;
        }
        if outcome < 0.57 {
            // Gave up at the payment step.
            self.checkout(&mut cart, false);
        }
        if !self.rng.random_bool(0.35) {
            return None;
        }
        let delay = if self.rng.random_bool(0.5) {
            Duration::minutes(self.rng.random_range(120..40 * 60))
        } else {
            Duration::minutes(self.rng.random_range(72 * 60..192 * 60))
        };
        Some((cart, self.clock + delay))
    }

    // -- storylines --------------------------------------------------------

    /// Anonymous visits in the days before `t`, then a sign-up at `t`; from
    /// then on browser calls carry both ids.
    pub(crate) fn sign_up(&mut self, t: DateTime<Utc>, earliest: DateTime<Utc>) {
        self.who = Who::Anon;
        let lo = earliest.max(t - Duration::days(6));
        let hi = t - Duration::hours(3);
        if hi > lo {
            for _ in 0..self.rng.random_range(1..=3) {
                self.random_visit(lo, hi, false);
            }
        }
        let arrival = t - Duration::seconds(self.rng.random_range(200..400));
        self.begin(arrival);
        self.view_home();
        // The sign-up page loads before `t`, whatever the reading time.
        self.clock = t - Duration::seconds(110);
        self.page("Sign Up", "/account/signup".into(), "Create account".into());
        self.clock = t;
        self.who = Who::Both;
        let method = pick(&mut self.rng, &["email", "google", "apple"]);
        self.track("Signed Up", json!({ "method": method }));
        self.end();
    }

    /// Three to five visits within six days that all look at the same
    /// product, which this person then never buys.
    pub(crate) fn repeated_views(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let c = self.actor.favourites[0];
        let p = self.pick_product(c);
        self.never_buys = Some(p);
        let block = Duration::days(6).min(hi - lo);
        let first = instant_between(&mut self.rng, lo, hi - block);
        let n = self.rng.random_range(3..=5);
        for k in 0..n {
            let from = first + block * k / n;
            let to = first + block * (k + 1) / n;
            let t = self.visit_time(from, to);
            self.begin(t);
            if self.rng.random_bool(0.4) {
                self.view_home();
            }
            self.view_product(p);
            if self.rng.random_bool(0.4) {
                let other = self.pick_product(c);
                if other != p {
                    self.view_product(other);
                }
            }
            self.end();
        }
    }

    /// A ticket opened on the help page, usually closed by the support desk
    /// between 45 minutes and five days later.
    pub(crate) fn support_ticket(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        self.page("Help", "/help".into(), "Help centre".into());
        self.tickets += 1;
        let ticket_id = format!("tkt-{}-{}", self.actor.label, self.tickets);
        let topic = pick(
            &mut self.rng,
            &["delivery", "returns", "payment", "product", "account"],
        );
        let priority = if self.rng.random_bool(0.2) {
            "high"
        } else {
            "normal"
        };
        self.track(
            "Support Ticket Opened",
            json!({"ticket_id": ticket_id, "category": topic, "priority": priority, "channel": "web"}),
        );
        self.end();
        if self.rng.random_bool(0.85) {
            let closed = self.clock + Duration::minutes(self.rng.random_range(45..5 * 24 * 60));
            let resolution = pick(
                &mut self.rng,
                &["answered", "refunded", "replaced", "no_action"],
            );
            self.server_track(
                closed,
                "Support Ticket Closed",
                json!({"ticket_id": ticket_id, "category": topic, "resolution": resolution}),
            );
        }
    }

    pub(crate) fn subscription_properties(&self, plan: Plan, expires: NaiveDate) -> Value {
        json!({
            "subscription_id": format!("sub-{}", self.actor.label),
            "plan": plan.as_str(),
            "amount": money(convert(plan.eur_cents(), self.currency)),
            "currency": self.currency.code(),
            "expires_at": expires.format("%Y-%m-%d").to_string(),
        })
    }

    /// Joins the membership on the website.
    pub(crate) fn subscribe(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        self.page("Membership", "/membership".into(), "Membership".into());
        let plan = if self.rng.random_bool(0.7) {
            Plan::Monthly
        } else {
            Plan::Annual
        };
        let expires = plan.next_expiry(self.actor.zone.to_local(t).date());
        let props = self.subscription_properties(plan, expires);
        self.track("Subscription Started", props);
        self.end();
    }

    /// The billing job renews the membership early in the morning of each
    /// expiry date before `hi`, until the person lets it lapse.
    pub(crate) fn renewals(&mut self, sub: Subscription, hi: DateTime<Utc>) {
        let mut expires = sub.expires;
        loop {
            let local = expires.and_time(NaiveTime::MIN)
                + Duration::minutes(self.rng.random_range(180..360));
            let t = self.actor.zone.to_utc(local);
            if t >= hi || !self.rng.random_bool(0.7) {
                return;
            }
            expires = sub.plan.next_expiry(expires);
            let props = self.subscription_properties(sub.plan, expires);
            self.server_track(t, "Subscription Renewed", props);
        }
    }

    /// Unsubscribes from marketing email through the preference page.
    pub(crate) fn email_unsubscribe(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.begin(t);
        self.page(
            "Email Preferences",
            "/account/email-preferences".into(),
            "Email preferences".into(),
        );
        let date = self.actor.zone.to_local(t).date().format("%Y%m%d");
        let props = json!({
            "campaign_id": format!("cmp-{date}"),
            "campaign_name": "Weekly picks",
            "email_id": format!("eml-{date}-{}", self.actor.label),
            "list": "newsletter",
        });
        self.track("Email Unsubscribed", props);
        self.end();
    }

    /// Replies STOP to a text message; the SMS gateway reports it.
    pub(crate) fn sms_opt_out(&mut self, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let t = self.visit_time(lo, hi);
        self.server_track(
            t,
            "SMS Opted Out",
            json!({"channel": "sms", "keyword": "STOP"}),
        );
    }

    /// A loyalty tier change, sent as an identify call (tier is a trait, not
    /// an event), usually right after a purchase that earned it.
    pub(crate) fn tier_change(&mut self, from: Tier, lo: DateTime<Utc>, hi: DateTime<Utc>) {
        let to = match from {
            Tier::Bronze => Tier::Silver,
            Tier::Silver if self.rng.random_bool(0.75) => Tier::Gold,
            Tier::Silver => Tier::Bronze,
            Tier::Gold => Tier::Silver,
        };
        let ts = if !self.purchases.is_empty() && self.rng.random_bool(0.7) {
            pick(&mut self.rng, &self.purchases) + Duration::minutes(self.rng.random_range(1..30))
        } else {
            instant_between(&mut self.rng, lo, hi)
        };
        self.events.push(Ev {
            ts,
            call: Call::Identify,
            who: Who::User,
            body: json!({"loyalty_tier": to.as_str()}),
            context: server_context(self.actor.zone),
        });
    }
}

/// Calls in an average visit of a customer who can buy (measured: carts,
/// checkouts and come-back visits included) and of an anonymous visitor. Used
/// to turn an event budget into a number of visits.
pub(crate) const CALLS_PER_VISIT: f64 = 6.8;
pub(crate) const CALLS_PER_ANONYMOUS_VISIT: f64 = 6.0;

/// How many visits spend `budget` calls on average: the fraction is rounded
/// up or down at random, so small budgets still add up to the right mean.
pub(crate) fn visits_for(rng: &mut StdRng, budget: f64, calls_per_visit: f64) -> usize {
    let visits = (budget.max(0.0) / calls_per_visit + rng.random::<f64>()).floor();
    // Bounds the work for absurd means; 10,000 visits is far beyond a span.
    visits.min(10_000.0) as usize
}

/// A known customer's calls over the span, sorted by time.
pub(crate) fn customer_journey(
    c: &Customer,
    opts: &GenerateOptions,
    span: &Span,
) -> (Actor, Vec<Ev>) {
    let mut rng = stream(opts.seed, STREAM_JOURNEY, c.index as u64);
    let label = format!("{:05}", c.index);
    let actor = Actor::new(&mut rng, label, Some(c.user_id.clone()), c.zone);
    let mut j = Journey::new(rng, actor, Who::Both);
    if c.lifecycle == Lifecycle::Dormant || opts.events_per_customer <= 0.0 {
        return (j.actor, Vec::new());
    }

    // This customer's share of calls: skewed around the mean. Unless the mean
    // is tiny, every customer who is not dormant gets at least one visit's
    // worth (lapsed ones too: they are defined by their early activity), so
    // the customers without any activity are the dormant ones.
    let mean = opts.events_per_customer * c.tier.activity();
    let at_least = if mean > CALLS_PER_VISIT {
        CALLS_PER_VISIT
    } else {
        0.0
    };
    let mut spread = (mean - at_least).max(0.0);
    if c.lifecycle == Lifecycle::Lapsed {
        spread *= 0.5;
    }
    let budget = at_least + heavy_tailed(&mut j.rng, spread);

    // The window this customer is active in.
    let (lo, hi) = match c.lifecycle {
        // (Dormant customers returned above.)
        Lifecycle::Active | Lifecycle::Dormant => (span.start, span.end),
        // Customer::new only picks Lapsed for spans of 35+ days, so this
        // window is at least four days long.
        Lifecycle::Lapsed => (span.start, span.end - Duration::days(31)),
        Lifecycle::SignsUp(t) => {
            j.sign_up(t, span.start);
            (t + Duration::minutes(2), span.end)
        }
    };

    // Storylines go first, so ordinary shopping later knows which product
    // this customer never buys. Customers with almost no budget get none.
    if budget >= 1.0 {
        // Three to five visits of two to four calls each.
        if budget >= 12.0 && j.rng.random_bool(0.25) {
            j.repeated_views(lo, hi);
        }
        if j.rng.random_bool(0.08) {
            j.support_ticket(lo, hi);
        }
        match c.subscription {
            Some(sub) if c.lifecycle == Lifecycle::Active => j.renewals(sub, hi),
            Some(_) => {}
            None => {
                if j.rng.random_bool(0.04) {
                    j.subscribe(lo, hi);
                }
            }
        }
        if c.consent.email && j.rng.random_bool(0.025) {
            j.email_unsubscribe(lo, hi);
        }
        if c.consent.sms && j.rng.random_bool(0.025) {
            j.sms_opt_out(lo, hi);
        }
    }

    // Ordinary visits spend what is left of the budget.
    let left = budget - j.events.len() as f64;
    let min_visits = usize::from(at_least > 0.0);
    for _ in 0..visits_for(&mut j.rng, left, CALLS_PER_VISIT).max(min_visits) {
        j.random_visit(lo, hi, true);
    }

    // Lapsed customers stay silent at the end, so they get no tier change.
    if budget >= 1.0 && c.lifecycle != Lifecycle::Lapsed && j.rng.random_bool(0.055) {
        j.tier_change(c.tier, lo, hi);
    }

    let signed_up_at = match c.lifecycle {
        Lifecycle::SignsUp(t) => Some(t),
        _ => None,
    };
    let mut events = j.events;
    // Follow-ups that would land after the window (a late come-back visit, a
    // ticket closed after the span) are simply not observed.
    events.retain(|e| {
        e.ts >= span.start
            && e.ts < hi
            && !signed_up_at.is_some_and(|t| e.who == Who::Anon && e.ts >= t)
    });
    events.sort_by_key(|e| e.ts);
    (j.actor, events)
}

/// Shortest span for the response simulator: a quiet first day, then carts,
/// each followed by its whole 7-day attribution window plus a replay batch.
pub(crate) const LIFT_MIN_DAYS: u32 = 10;

/// The response simulator's journey (see [`Lift`]): one visit that leaves a
/// cart, then, with the arm's probability, a visit that buys it after the
/// message.
pub(crate) fn experiment_journey(
    c: &Customer,
    opts: &GenerateOptions,
    span: &Span,
    lift: &Lift,
) -> (Actor, Vec<Ev>) {
    let mut rng = stream(opts.seed, STREAM_EXPERIMENT, c.index as u64);
    let label = format!("{:05}", c.index);
    let actor = Actor::new(&mut rng, label, Some(c.user_id.clone()), c.zone);
    let mut j = Journey::new(rng, actor, Who::Both);
    // Carts from the second day (profiles arrive first) until 8 days and
    // the delay before the end, so every window closes inside the span.
    let lo = span.start + Duration::days(1);
    let hi = span.end - Duration::days(8) - lift.max_delay();
    let t = j.visit_time(lo, hi.max(lo + Duration::hours(1)));
    j.begin(t);
    let category = j.pick_category();
    j.view_category(category);
    let p = j.pick_product(category);
    j.view_product(p);
    let mut cart = j.new_cart();
    j.add_to_cart(&mut cart, p);
    j.page("Cart", "/cart".into(), "Your cart".into());
    j.end();

    // The same function, inputs and salt the policy stage uses.
    let assigned = lift.design.assign(&c.user_id);
    let (arm, variant) = (assigned.arm, assigned.variant.as_deref());
    if j.rng.random_bool(lift.rate(arm, variant)) {
        let qualified = j.clock + lift.delay(variant);
        let message = match arm {
            kairos_experiments::Arm::Scheduled => qualified + Duration::days(1),
            _ => qualified,
        };
        let lag = Duration::hours(6) + Duration::minutes(j.rng.random_range(0..3 * 24 * 60));
        j.begin(message + lag);
        j.page("Cart", "/cart".into(), "Your cart".into());
        j.checkout(&mut cart, true);
        j.end();
    }
    let mut events = j.events;
    events.retain(|e| e.ts < span.end);
    events.sort_by_key(|e| e.ts);
    (j.actor, events)
}

/// An anonymous-only visitor: browses and fills carts, never signs up or
/// buys.
pub(crate) fn visitor_journey(
    opts: &GenerateOptions,
    index: usize,
    span: &Span,
) -> (Actor, Vec<Ev>) {
    let mut rng = stream(opts.seed, STREAM_VISITOR, index as u64);
    let zone = Zone::pick(&mut rng);
    let actor = Actor::new(&mut rng, format!("v{index:05}"), None, zone);
    let mut j = Journey::new(rng, actor, Who::Anon);
    if opts.events_per_customer <= 0.0 {
        return (j.actor, Vec::new());
    }
    let budget = heavy_tailed(&mut j.rng, opts.events_per_customer * 0.35);
    // Everyone counted as a visitor visits at least once.
    let visits = visits_for(&mut j.rng, budget, CALLS_PER_ANONYMOUS_VISIT).max(1);
    for _ in 0..visits {
        j.random_visit(span.start, span.end, false);
    }
    let mut events = j.events;
    events.retain(|e| e.ts >= span.start && e.ts < span.end);
    events.sort_by_key(|e| e.ts);
    (j.actor, events)
}
